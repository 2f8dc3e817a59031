"""Backward compatibility: the small artifacts committed under ``saved_models/test_artifacts``
(a ``.keras`` file and a SavedModel of a tiny SSD-NET, with the outputs they gave when they
were written) must still load and give the same detections.

Regenerate them (only on purpose, when the format is meant to change) with::

    python -m tests.export.test_artifacts
"""

import os
import pathlib

import keras
import numpy as np
import tensorflow as tf

from keras_cvx.export.saved_model import export_saved_model
from keras_cvx.layers.ssd_decoder import SSDDecoder
from keras_cvx.models.ssd_net import SSDNet

ARTIFACTS = pathlib.Path(__file__).resolve().parents[2] / "saved_models" / "test_artifacts"
KERAS_FILE = ARTIFACTS / "ssd_net_tiny.keras"
SAVED_MODEL = ARTIFACTS / "ssd_net_tiny" / "1"
EXPECTED = ARTIFACTS / "ssd_net_tiny_expected.npz"
SIZE = 64
DETECTION_KEYS = ("boxes", "scores", "classes", "num_detections")
SERVING_KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


def tiny_ssd_net():
    keras.utils.set_random_seed(0)
    model = SSDNet(3, image_size=SIZE, backbone="resnet10", width_multiplier=0.0625, fusion_channels=8,
                   decoder=SSDDecoder(max_detections=10))
    model(np.zeros((1, SIZE, SIZE, 3), "float32"))
    # Random weights give class logits of about +-70: scores of exactly 1.0, whose order is a
    # tie that another CPU may break differently. Smaller class kernels give distinct scores.
    for variable in model.weights:
        if "class_conv" in variable.path and variable.path.endswith("kernel"):
            variable.assign(variable * 0.01)
    return model


def request_image():
    """uint8 [1, 80, 96, 3]: the serving signature resizes it to 64x64 inside."""
    return np.random.default_rng(0).integers(0, 256, (1, 80, 96, 3), dtype=np.uint8)


def make_artifacts():
    model = tiny_ssd_net()
    os.makedirs(ARTIFACTS, exist_ok=True)
    model.save(KERAS_FILE)
    export_saved_model(model, str(SAVED_MODEL), (SIZE, SIZE))
    image = request_image()
    model_input = np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    detections = model.predict_step(model_input)
    served = tf.saved_model.load(str(SAVED_MODEL)).signatures["serving_default"](images=tf.constant(image))
    np.savez(
        EXPECTED,
        model_input=model_input,
        request=image,
        **{key: keras.ops.convert_to_numpy(detections[key]) for key in DETECTION_KEYS},
        **{f"served_{key}": served[key].numpy() for key in SERVING_KEYS},
    )


def test_keras_file_loads_with_safe_mode_and_gives_the_recorded_detections():
    expected = np.load(EXPECTED)
    model = keras.saving.load_model(KERAS_FILE, safe_mode=True)
    detections = model.predict_step(expected["model_input"])
    for key in DETECTION_KEYS:
        np.testing.assert_allclose(keras.ops.convert_to_numpy(detections[key]), expected[key], rtol=1e-4, atol=1e-4)
    assert int(expected["num_detections"].min()) > 0


def test_saved_model_serves_the_recorded_detections():
    expected = np.load(EXPECTED)
    served = tf.saved_model.load(str(SAVED_MODEL)).signatures["serving_default"](images=tf.constant(expected["request"]))
    for key in SERVING_KEYS:
        np.testing.assert_allclose(served[key].numpy(), expected[f"served_{key}"], rtol=1e-4, atol=1e-4)


def test_artifacts_stay_small():
    # about 3.7 MB: each of the two serving endpoints holds the decoder's NMS loop graph (2 MB of graph)
    total = sum(path.stat().st_size for path in ARTIFACTS.rglob("*") if path.is_file())
    assert total < 4 * 2**20, total


if __name__ == "__main__":
    make_artifacts()
