"""End to end: the exported toy detector's SavedModel outputs (``image_bytes`` and
``serving_default`` at the images' original sizes) evaluated by ``COCOEvaluator`` give the
same bbox and segm numbers as ``predict_step`` on the resized/padded images of
``keras_cvx.data.coco`` evaluated by it.

The images are synthetic shapes (64x48, scale 0.5) and their top-left 32x16 crops (scale 1),
so the toy's full-image masks map to the original image exactly in both paths (a factor of 2
or 1 of 0/1 masks). The ground truth is written here: a grid of boxes at the toy's cells
(inset by 0, 1 or 2 px, so IoUs are 1, 0.77 and 0.56), classes and presence in a fixed
pattern, so that the toy's detections are partly right (AP 0.07)."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_cvx.data.coco import coco_dataset
from keras_cvx.data.shapes import synthetic_shapes
from keras_cvx.evaluation.coco_evaluator import STAT_NAMES, COCOEvaluator
from keras_cvx.export.saved_model import export_saved_model
from tests.export.test_saved_model import SIZE, make_detector

CELL = 8  # the toy's cell, pixels of its 32x32 input


def _grid_ground_truth(image_id, height, width, first_id):
    """Boxes on the toy's cells mapped to the image (cell side ``8 / scale``)."""
    side = CELL / min(SIZE[0] / height, SIZE[1] / width)
    annotations = []
    for row in range(int(height // side)):
        for col in range(int(width // side)):
            if (row + col + image_id) % 3 == 0:
                continue
            inset = (row + col) % 3 * side / 16
            x, y, w = col * side + inset, row * side + inset, side - 2 * inset
            annotations.append({
                "id": first_id + len(annotations), "image_id": image_id, "iscrowd": 0,
                "category_id": 1 + (row * 3 + col + image_id) % 2, "bbox": [x, y, w, w], "area": w * w,
                "segmentation": [[x, y, x + w, y, x + w, y + w, x, y + w]],
            })
    return annotations


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    synthetic_shapes(str(root), num_images=4, image_size=(64, 48), num_classes=2, seed=5)
    image_dir = root / "images"
    images, annotations = [], []
    for index, name in enumerate(sorted(os.listdir(image_dir))):
        pixels = np.asarray(Image.open(image_dir / name))
        crop = f"crop_{name}"
        Image.fromarray(pixels[:32, :16]).save(image_dir / crop)
        for image_id, file_name, (height, width) in ((index + 1, name, (64, 48)), (index + 11, crop, (32, 16))):
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
            annotations += _grid_ground_truth(image_id, height, width, len(annotations) + 1)
    path = root / "grid.json"
    categories = [{"id": 1, "name": "even"}, {"id": 2, "name": "odd"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))

    keras.config.set_dtype_policy("float32")
    model = make_detector(with_masks="full")
    kernel, _ = model.head.get_weights()
    model.head.set_weights([kernel, np.array([-0.2, -0.2], "float32")])  # more detections
    export = str(root / "model")
    export_saved_model(model, export, SIZE)
    return model, str(path), str(image_dir), images, tf.saved_model.load(export).signatures


def _stats(result):
    return np.array([result[f"{kind}/{name}"] for kind in ("bbox", "segm") for name in STAT_NAMES])


def test_served_outputs_evaluate_as_predict_step(served):
    model, path, image_dir, images, signatures = served
    reference = COCOEvaluator(path)
    detections = 0
    for batch, targets in coco_dataset(path, image_dir, SIZE, 16, 3, False):
        outputs = model.predict_step(batch)
        detections += int(np.sum(outputs["num_detections"]))
        reference.update(targets["image_info"], outputs)
    expected = reference.result()
    assert detections >= 20
    assert 0.02 < expected["bbox/AP"] < 0.9 and 0.02 < expected["segm/AP"] < 0.9
    assert expected["bbox/AP50"] > expected["bbox/AP75"] > 0

    by_bytes, by_tensor = COCOEvaluator(path), COCOEvaluator(path)
    order = sorted(images, key=lambda im: im["id"] % 10)  # batches mix both sizes
    for start in range(0, len(order), 3):
        chunk = order[start : start + 3]
        info = {key: np.array([im[key] for im in chunk]) for key in ("height", "width")}
        info["image_id"] = np.array([im["id"] for im in chunk])
        data = [open(os.path.join(image_dir, im["file_name"]), "rb").read() for im in chunk]
        outputs = signatures["image_bytes"](image_bytes=tf.constant(data))
        assert outputs["detection_masks"].shape[2:] == (64, 48)
        by_bytes.update(info, outputs)
    for size in ((64, 48), (32, 16)):  # serving_default takes one size a batch
        chunk = [im for im in images if (im["height"], im["width"]) == size]
        pixels = np.stack([np.asarray(Image.open(os.path.join(image_dir, im["file_name"]))) for im in chunk])
        info = {"image_id": np.array([im["id"] for im in chunk]), "height": np.full(len(chunk), size[0]),
                "width": np.full(len(chunk), size[1])}
        by_tensor.update(info, signatures["serving_default"](images=tf.constant(pixels)))
    for evaluator in (by_bytes, by_tensor):
        np.testing.assert_allclose(_stats(evaluator.result()), _stats(expected), atol=1e-6)
