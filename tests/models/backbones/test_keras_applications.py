import os
import tempfile

import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.models.backbones.keras_applications import FEATURE_LAYERS, default_feature_layers, FeatureExtractor

pytestmark = pytest.mark.single_backend

SIZE = 64
APPLICATIONS = [
    (keras.applications.ResNet50, (256, 512, 1024, 2048)),
    (keras.applications.ResNet101, (256, 512, 1024, 2048)),
    (keras.applications.ResNet152, (256, 512, 1024, 2048)),
    (keras.applications.MobileNetV2, (24, 32, 96, 1280)),
    (keras.applications.EfficientNetB0, (24, 40, 112, 1280)),
]


def images(seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=(2, SIZE, SIZE, 3)).astype("float32")


@pytest.mark.parametrize("application, channels", APPLICATIONS)
def test_default_layers_give_strides_4_to_32(application, channels):
    base = application(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    backbone = FeatureExtractor(base)
    assert sorted(backbone.output) == ["C2", "C3", "C4", "C5"]
    for (key, tensor), stride, width in zip(sorted(backbone.output.items()), (4, 8, 16, 32), channels):
        assert tuple(tensor.shape) == (None, SIZE // stride, SIZE // stride, width), key
    assert backbone.name == f"{base.name}_features"


def test_features_share_the_weights_and_equal_the_application_output():
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    backbone = FeatureExtractor(base)
    assert backbone.get_layer("conv1_conv") is base.get_layer("conv1_conv")
    assert len(backbone.weights) == len(base.weights)
    x = images()
    np.testing.assert_array_equal(ops.convert_to_numpy(backbone(x)["C5"]), ops.convert_to_numpy(base(x)))


def test_explicit_layers_and_round_trip():
    base = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    assert base.name == "mobilenetv2_0.35_64"
    backbone = FeatureExtractor(base, {"P3": "block_5_add", "P4": "block_12_add"}, name="two_levels")
    x = images(1)
    outputs = backbone(x)
    assert sorted(outputs) == ["P3", "P4"] and backbone.name == "two_levels"
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "features.keras")
        backbone.save(path)
        restored = keras.saving.load_model(path, safe_mode=True)
    for key, value in outputs.items():
        np.testing.assert_allclose(ops.convert_to_numpy(restored(x)[key]), ops.convert_to_numpy(value), rtol=1e-5, atol=1e-6)


def test_default_table():
    assert default_feature_layers("resnet101") == dict(zip(["C2", "C3", "C4", "C5"], FEATURE_LAYERS["resnet101"]))
    assert default_feature_layers("mobilenetv2_1.40_224")["C5"] == "out_relu"
    with pytest.raises(ValueError, match="feature_layers"):
        default_feature_layers("convnext_tiny")


def test_errors():
    base = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    with pytest.raises(ValueError, match="lacks"):
        FeatureExtractor(base, {"C2": "conv2_block3_out"})
    with pytest.raises(ValueError, match="feature_layers"):
        FeatureExtractor(base, {})
    with pytest.raises(ValueError, match="feature_layers"):
        FeatureExtractor(base, ["block_2_add"])
    with pytest.raises(ValueError, match="application"):
        FeatureExtractor(keras.layers.Dense(2))
