"""Tests for keras_cvx.data.real_images: the bundled coins image and its annotations."""

import json
import os

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from keras_cvx.data.coco import coco_dataset
from keras_cvx.data.real_images import coins_dataset, segment_coins


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
