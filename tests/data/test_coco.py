"""Tests for keras_cvx.data.coco: the target contract on synthetic data, and bad/special data."""

import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from keras_cvx.data.coco import class_id_map, coco_dataset, load_coco, prepare_example
from keras_cvx.data.shapes import synthetic_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    path = synthetic_shapes(str(out), num_images=4, image_size=(48, 64), num_classes=3, max_objects=4, seed=7)
    return path, str(out / "images")


def test_contract_on_synthetic_data(shapes):
    path, image_dir = shapes
    coco = COCO(path)
    ds = coco_dataset(path, image_dir, (32, 32), max_instances=6, batch_size=2, training=False, mask_stride=4)
    batches = list(ds)
    assert len(batches) == 2
    images, targets = batches[0]
    assert images.shape == (2, 32, 32, 3) and images.dtype == tf.float32
    assert targets["boxes"].shape == (2, 6, 4) and targets["labels"].dtype == tf.int32
    assert targets["masks"].shape == (2, 6, 8, 8) and targets["masks"].dtype == tf.uint8
    scale = 0.5  # min(32 / 48, 32 / 64)
    np.testing.assert_allclose(targets["image_info"]["scale"].numpy(), [scale, scale])
    id_map = {v: k for k, v in class_id_map(coco).items()}
    for b in range(2):
        image_id = int(targets["image_info"]["image_id"][b])
        assert (targets["image_info"]["height"][b], targets["image_info"]["width"][b]) == (48, 64)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        expected = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
        n = len(anns)
        np.testing.assert_allclose(targets["boxes"][b, :n].numpy(), expected * scale, atol=1e-5)
        np.testing.assert_array_equal(targets["boxes"][b, n:].numpy(), 0.0)
        np.testing.assert_array_equal(targets["labels"][b].numpy(), [id_map[a["category_id"]] for a in anns] + [-1] * (6 - n))
        for i, ann in enumerate(anns):
            # the mask on the stride-4 grid covers about area * (scale / 4)^2 cells
            cells = targets["masks"][b, i].numpy().sum()
            assert abs(cells - ann["area"] * (scale / 4) ** 2) <= 0.5 * ann["area"] * (scale / 4) ** 2 + 3
        assert targets["masks"][b, n:].numpy().sum() == 0
    # image pixels: resized image in the top-left 24x32, zeros below
    assert images[0, :24].numpy().max() > 50 and images[0, 24:].numpy().max() == 0.0


def _write_image(path, height, width, value=90):
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)


@pytest.fixture()
def special(tmp_path):
    _write_image(tmp_path / "a.png", 20, 30)
    _write_image(tmp_path / "b.png", 10, 10)
    rect = np.zeros((20, 30), np.uint8)
    rect[4:12, 6:14] = 1
    rle = mask_utils.encode(np.asfortranarray(rect))
    rle["counts"] = rle["counts"].decode("ascii")
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [6, 4, 8, 8], "segmentation": rle, "iscrowd": 0, "area": 64},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 30, 20], "segmentation": rle, "iscrowd": 1, "area": 600},
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [5, 5, 0, 4], "segmentation": [], "iscrowd": 0, "area": 0},
        {"id": 4, "image_id": 1, "category_id": 3, "bbox": [40, 2, 5, 5], "segmentation": [], "iscrowd": 0, "area": 25},
        {"id": 5, "image_id": 1, "category_id": 3, "bbox": [25, -3, 10, 8], "segmentation": [[25, 0, 30, 0, 30, 5]], "iscrowd": 0, "area": 30},
        {"id": 6, "image_id": 1, "category_id": 99, "bbox": [1, 1, 3, 3], "segmentation": [], "iscrowd": 0, "area": 9},
        {"id": 7, "image_id": 1, "category_id": 3, "bbox": [1, 1, "nan", 3], "segmentation": [], "iscrowd": 0, "area": 9},
    ]
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30},
                   {"id": 2, "file_name": "b.png", "height": 10, "width": 10}],
        "annotations": anns,
        "categories": [{"id": 3, "name": "three"}, {"id": 7, "name": "seven"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return str(path), str(tmp_path)


def test_crowd_zero_area_outside_and_empty_images(special):
    path, image_dir = special
    ds = coco_dataset(path, image_dir, (20, 30), max_instances=4, batch_size=2, training=False, mask_stride=2)
    images, targets = next(iter(ds))
    # kept: ann 1 (label 1) and ann 5 clipped to the image (label 0); crowd, zero-area,
    # outside, unknown category and NaN boxes are dropped
    np.testing.assert_array_equal(targets["labels"].numpy(), [[1, 0, -1, -1], [-1, -1, -1, -1]])
    np.testing.assert_allclose(targets["boxes"][0, :2].numpy(), [[6, 4, 14, 12], [25, 0, 30, 5]])
    np.testing.assert_array_equal(targets["boxes"][1].numpy(), 0.0)
    assert not np.isnan(targets["boxes"].numpy()).any()
    expected = np.zeros((10, 15), np.uint8)
    expected[2:6, 3:7] = 1  # the 8x8 square at (6, 4) on the stride-2 grid
    np.testing.assert_array_equal(targets["masks"][0, 0].numpy(), expected)
    # second image (10x10, no objects) scaled by 2 and padded
    assert float(targets["image_info"]["scale"][1]) == 2.0
    np.testing.assert_allclose(images[1, :, :20].numpy(), 90.0, atol=1e-3)
    np.testing.assert_array_equal(images[1, :, 20:].numpy(), 0.0)


def test_max_instances_truncates(special):
    path, image_dir = special
    _, targets = next(iter(coco_dataset(path, image_dir, (20, 30), max_instances=1, batch_size=1, training=False)))
    np.testing.assert_array_equal(targets["labels"].numpy(), [[1]])


def test_training_flips_and_repeats(special):
    path, image_dir = special
    ds = coco_dataset(path, image_dir, (20, 30), max_instances=2, batch_size=1, training=True, seed=1)
    seen = set()
    for _, targets in ds.take(16):
        if int(targets["image_info"]["image_id"][0]) == 1:
            seen.add(tuple(targets["boxes"][0, 0].numpy().tolist()))
    assert seen == {(6.0, 4.0, 14.0, 12.0), (16.0, 4.0, 24.0, 12.0)}  # as is, and mirrored in width 30


def test_prepare_example_flips_masks_with_boxes():
    image = tf.zeros((4, 6, 3), tf.uint8)
    masks = np.zeros((1, 4, 6), np.uint8)
    masks[0, 1:3, 0:2] = 1
    _, targets = prepare_example(
        image, tf.constant(5, tf.int64), tf.constant([[0.0, 1.0, 2.0, 3.0]]), tf.constant([0]),
        tf.constant([False]), tf.constant(masks), tf.constant(True), (4, 6), 2, 1,
    )
    np.testing.assert_allclose(targets["boxes"].numpy(), [[4, 1, 6, 3], [0, 0, 0, 0]])
    np.testing.assert_array_equal(targets["masks"][0].numpy(), masks[0][:, ::-1])


def test_truncated_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [{"id": 1, "file_na')
    with pytest.raises(ValueError, match="broken.json"):
        coco_dataset(str(path), str(tmp_path), (8, 8), 2, 1, False)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="broken.json"):
        load_coco(str(path))


def test_rejects_bad_arguments(special):
    path, image_dir = special
    with pytest.raises(ValueError, match="mask_stride"):
        coco_dataset(path, image_dir, (20, 30), 2, 1, False, mask_stride=4)
    with pytest.raises(ValueError, match="max_instances"):
        coco_dataset(path, image_dir, (20, 30), 0, 1, False)
