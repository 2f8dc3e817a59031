"""Tests for keras_cvx.data.shapes: determinism, masks/boxes agreeing with the json, long tail,
explicit class weights."""

import filecmp
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from keras_cvx.data.shapes import LONG_TAILED_PROFILE, SHAPE_NAMES, synthetic_shapes


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    synthetic_shapes(str(out), num_images=12, image_size=(64, 80), num_classes=5, max_objects=6, seed=3)
    return out


def test_same_seed_same_bytes(shapes_dir, tmp_path):
    synthetic_shapes(str(tmp_path), num_images=12, image_size=(64, 80), num_classes=5, max_objects=6, seed=3)
    assert filecmp.cmp(shapes_dir / "annotations.json", tmp_path / "annotations.json", shallow=False)
    for name in sorted(os.listdir(shapes_dir / "images")):
        assert filecmp.cmp(shapes_dir / "images" / name, tmp_path / "images" / name, shallow=False)
    synthetic_shapes(str(tmp_path / "other"), num_images=12, image_size=(64, 80), seed=4)
    assert not filecmp.cmp(shapes_dir / "annotations.json", tmp_path / "other" / "annotations.json", shallow=False)


def test_masks_boxes_and_images_agree(shapes_dir):
    coco = COCO(str(shapes_dir / "annotations.json"))
    assert len(coco.imgs) == 12 and len(coco.anns) > 10
    kinds = set()
    for ann in coco.anns.values():
        mask = coco.annToMask(ann)
        kinds.add(type(ann["segmentation"]).__name__)
        assert mask.sum() == ann["area"] > 0
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert ann["bbox"] == [cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]]
        image = np.asarray(Image.open(shapes_dir / "images" / coco.imgs[ann["image_id"]]["file_name"]))
        assert image.shape == (64, 80, 3)
        # a visible object is a single flat colour inside its mask
        assert image[mask.astype(bool)].std(axis=0).max() < 1.0
    assert kinds == {"list", "dict"}  # polygons for whole objects, RLE for occluded ones
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == set(SHAPE_NAMES[:5])


def test_sizes_from_tiny_to_large(tmp_path):
    path = synthetic_shapes(str(tmp_path), num_images=30, image_size=(96, 96), max_objects=4, seed=0)
    sides = [max(a["bbox"][2:]) for a in json.load(open(path))["annotations"]]
    assert min(sides) <= 12 and max(sides) >= 36


def test_long_tailed_frequencies_and_groups(tmp_path):
    path = synthetic_shapes(
        str(tmp_path), num_images=60, image_size=(32, 32), num_classes=8, max_objects=3,
        min_size=6, long_tailed=True, zipf_exponent=2.0, image_format="jpg", seed=1,
    )
    data = json.load(open(path))
    counts = np.bincount([a["category_id"] - 1 for a in data["annotations"]], minlength=8)
    # Zipf s=2: class 0 has p = 1/H(8,2) = 0.64, class 7 p = 0.01
    assert counts[0] > 0.5 * counts.sum() and counts[0] > 10 * max(counts[7], 1)
    for cat in data["categories"]:
        n = cat["image_count"]
        assert n == len({a["image_id"] for a in data["annotations"] if a["category_id"] == cat["id"]})
        assert cat["frequency"] == ("f" if n > 12 else "r" if n <= 3 else "c")
    assert {c["frequency"] for c in data["categories"]} >= {"f", "r"}
    assert data["images"][0]["file_name"].endswith(".jpg")


def _class_histogram(path, num_classes):
    return np.bincount([a["category_id"] - 1 for a in json.load(open(path))["annotations"]], minlength=num_classes)


def test_class_weights_set_the_class_proportions(tmp_path):
    only_first = synthetic_shapes(
        str(tmp_path / "one"), num_images=20, image_size=(32, 32), class_weights=(3, 0, 0, 0, 0)
    )
    counts = _class_histogram(only_first, 5)
    assert counts[0] > 20 and counts[1:].sum() == 0
    path = synthetic_shapes(
        str(tmp_path / "mixed"), num_images=300, image_size=(32, 32), num_classes=4, class_weights=[1, 2, 0, 1], seed=0
    )
    counts = _class_histogram(path, 4)
    assert counts.sum() > 700  # a binomial proportion's standard deviation is then <= 0.019
    np.testing.assert_allclose(counts / counts.sum(), [0.25, 0.5, 0.0, 0.25], atol=0.05)
    assert json.load(open(path))["info"]["class_weights"] == [1.0, 2.0, 0.0, 1.0]


def test_long_tailed_profile_gives_frequent_common_and_rare_classes(tmp_path):
    # the size documented in the module docstring: 2 frequent, 3 common, 3 rare classes
    path = synthetic_shapes(
        str(tmp_path), num_images=300, image_size=(32, 32), num_classes=8, max_objects=5,
        class_weights=LONG_TAILED_PROFILE, seed=0,
    )
    data = json.load(open(path))
    assert [c["frequency"] for c in data["categories"]] == ["f", "f", "c", "c", "c", "r", "r", "r"]
    for cat in data["categories"][5:]:
        images = {a["image_id"] for a in data["annotations"] if a["category_id"] == cat["id"]}
        assert 1 <= len(images) <= 15  # a handful of training images, at most 5% of 300


@pytest.mark.parametrize(
    "weights", [(1, 1, 1), (1, 1, 1, 1, 1, 1), (1, -1, 1, 1, 1), (0, 0, 0, 0, 0), (1, float("nan"), 1, 1, 1),
                (1, float("inf"), 1, 1, 1), "abcde"],
)
def test_rejects_bad_class_weights(tmp_path, weights):
    with pytest.raises(ValueError, match="class_weights"):
        synthetic_shapes(str(tmp_path), num_classes=5, class_weights=weights)


def test_class_weights_exclude_long_tailed(tmp_path):
    with pytest.raises(ValueError, match="class_weights.*long_tailed"):
        synthetic_shapes(str(tmp_path), num_classes=5, class_weights=(1, 1, 1, 1, 1), long_tailed=True)


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        synthetic_shapes(str(tmp_path), num_classes=9)
    with pytest.raises(ValueError, match="image_size"):
        synthetic_shapes(str(tmp_path), image_size=(8, 8))
    with pytest.raises(ValueError, match="image_format"):
        synthetic_shapes(str(tmp_path), image_format="gif")
