"""Tests for keras_cvx.data.real_images: the bundled photographs and their annotations."""

import json
import os

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from keras_cvx.data.coco import coco_dataset
from keras_cvx.data.real_images import coins_dataset, photos_dataset, segment_coins


def test_bundled_files_and_attribution():
    annotation_file, image_dir = coins_dataset()
    assert os.path.isfile(os.path.join(image_dir, "coins.png"))
    attribution = open(os.path.join(image_dir, "ATTRIBUTION")).read()
    assert "Brooklyn Museum" in attribution and "scikit-image" in attribution
    coco = COCO(annotation_file)
    assert len(coco.anns) == 24 and coco.loadCats([1])[0]["name"] == "coin"
    areas = np.array([a["area"] for a in coco.anns.values()])
    assert areas.min() > 900 and areas.max() < 3500  # coins are ~35-65 px wide
    for ann in coco.anns.values():
        assert coco.annToMask(ann).sum() == ann["area"]


def test_segmentation_regenerates_the_committed_json():
    annotation_file, image_dir = coins_dataset()
    image = np.asarray(Image.open(os.path.join(image_dir, "coins.png")))
    assert segment_coins(image) == json.load(open(annotation_file))


def test_coins_through_the_pipeline():
    annotation_file, image_dir = coins_dataset()
    images, targets = next(iter(coco_dataset(annotation_file, image_dir, (160, 192), 32, 1, False, mask_stride=8)))
    assert images.shape == (1, 160, 192, 3)
    labels = targets["labels"].numpy()[0]
    assert (labels == 0).sum() == 24 and (labels[24:] == -1).all()
    assert float(targets["image_info"]["scale"][0]) == 0.5  # min(160 / 303, 192 / 384)
    assert targets["masks"].numpy()[0, :24].sum(axis=(1, 2)).min() > 0


def test_photos_files_attribution_and_boxes_inside_the_images():
    annotation_file, image_dir = photos_dataset()
    attribution = open(os.path.join(image_dir, "ATTRIBUTION")).read()
    assert attribution.count("CC0") >= 2 and "scikit-image" in attribution
    coco = COCO(annotation_file)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["eye", "nose", "cup", "spoon", "saucer"]
    for image in coco.loadImgs(coco.getImgIds()):
        with Image.open(os.path.join(image_dir, image["file_name"])) as picture:
            assert picture.size == (image["width"], image["height"]) and picture.mode == "RGB"
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        assert len(anns) == 3
        for ann in anns:
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x + w <= image["width"] and y + h <= image["height"]
            assert ann["area"] == w * h


def test_photos_through_the_pipeline_in_file_order():
    annotation_file, image_dir = photos_dataset()
    images, targets = next(iter(coco_dataset(annotation_file, image_dir, (160, 240), 8, 2, False)))
    assert images.shape == (2, 160, 240, 3)
    labels = targets["labels"].numpy()
    boxes = targets["boxes"].numpy()
    scales = targets["image_info"]["scale"].numpy()
    np.testing.assert_allclose(scales, [min(160 / 300, 240 / 451), min(160 / 400, 240 / 600)], rtol=1e-6)
    assert sorted(labels[0, :3]) == [0, 0, 1] and sorted(labels[1, :3]) == [2, 3, 4]
    assert (labels[:, 3:] == -1).all()
    coffee_boxes = {int(label): box for label, box in zip(labels[1, :3], boxes[1, :3])}
    np.testing.assert_allclose(coffee_boxes[2], np.array([172, 18, 418, 304]) * scales[1], atol=1e-3)
