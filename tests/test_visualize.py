"""Tests for keras_cvx.visualize: ground truth drawn on a synthetic and on the bundled coins image."""

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from keras_cvx.data.real_images import coins_dataset
from keras_cvx.data.shapes import synthetic_shapes
from keras_cvx.visualize import draw_detections, save_png


def _ground_truth(annotation_file, image_dir):
    coco = COCO(annotation_file)
    image_id = max(coco.getImgIds(), key=lambda i: len(coco.getAnnIds(imgIds=[i])))
    info = coco.imgs[image_id]
    image = np.asarray(Image.open(f"{image_dir}/{info['file_name']}"))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32)
    cat_ids = sorted(coco.getCatIds())
    labels = np.array([cat_ids.index(a["category_id"]) for a in anns])
    masks = np.stack([coco.annToMask(a) for a in anns])
    names = [c["name"] for c in coco.loadCats(cat_ids)]
    return image, boxes, labels, masks, names


def _check_drawn(image, drawn, boxes, masks):
    base = np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image
    assert drawn.shape == base.shape and drawn.dtype == np.uint8
    changed = (drawn != base).any(axis=-1)
    for (x1, y1, x2, y2), mask in zip(boxes.astype(int), masks):
        # the left and right box edges (below the label tab) and the mask interior changed
        assert changed[y1 + (y2 - y1) // 2, x1] and changed[y1 + (y2 - y1) // 2, max(x1, x2 - 1)]
        assert changed[mask.astype(bool)].mean() > 0.9
    union = np.zeros(changed.shape, bool)
    for x1, y1, x2, y2 in boxes.astype(int):
        union[max(y1 - 14, 0):y2 + 1, max(x1 - 1, 0):x2 + 60] = True
    assert not changed[~union].any()  # nothing drawn away from boxes and their labels


def test_ground_truth_on_synthetic_image(tmp_path):
    path = synthetic_shapes(str(tmp_path / "shapes"), num_images=3, image_size=(128, 160), max_objects=5, seed=2)
    image, boxes, labels, masks, names = _ground_truth(path, str(tmp_path / "shapes" / "images"))
    drawn = draw_detections(image, boxes, labels, scores=np.ones(len(labels)), masks=masks, class_names=names)
    _check_drawn(image, drawn, boxes, masks)
    out = save_png(str(tmp_path / "synthetic_gt.png"), drawn)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), drawn)


def test_ground_truth_on_coins(tmp_path):
    image, boxes, labels, masks, names = _ground_truth(*coins_dataset())
    assert image.shape == (303, 384) and len(boxes) == 24
    drawn = draw_detections(image, boxes, labels, masks=masks, class_names=names)
    _check_drawn(image, drawn, boxes, masks)
    out = save_png(str(tmp_path / "coins_gt.png"), drawn)
    assert np.asarray(Image.open(out)).shape == (303, 384, 3)


def test_padding_rows_are_not_drawn():
    image = np.zeros((20, 20, 3), np.float32)
    drawn = draw_detections(image, [[2, 2, 10, 10], [0, 0, 20, 20]], [-1, -1])
    assert not drawn.any()
    drawn = draw_detections(image, [[2, 2, 18, 18], [0, 0, 20, 20]], [0, -1], line_width=1)
    # box edges at x=2 and x=17 drawn, interior below the label tab and the outside untouched
    assert drawn[16, 2].any() and drawn[16, 17].any() and not drawn[16, 10].any() and not drawn[19, 19].any()


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="labels"):
        draw_detections(np.zeros((4, 4, 3)), [[0, 0, 1, 1]], [0, 1])
    with pytest.raises(ValueError, match="masks"):
        draw_detections(np.zeros((4, 4, 3)), [[0, 0, 1, 1]], [0], masks=np.zeros((1, 3, 3)))
