"""Every backbone is a ``Backbone``: its config is its constructor arguments, and a model
rebuilt from it (or loaded from a ``.keras`` file) has the same layers and outputs."""

import keras
import numpy as np
import pytest

from keras_cvx.models.backbones import VGG16SSD, Backbone, FeatureExtractor, MobileNetV2, ResNet

pytestmark = pytest.mark.single_backend


def _resnet():
    return ResNet(depth=10, include_top=False, input_shape=(32, 32, 3), base_width=8, activation="dy_relu_b"), \
        {"depth": 10, "base_width": 8, "include_top": False, "activation": "dy_relu_b"}


def _resnet_classifier():
    return ResNet(depth=14, attention="se", num_classes=5, input_shape=(32, 32, 3), base_width=32, rezero=True), \
        {"depth": 14, "attention": "se", "num_classes": 5, "rezero": True}


def _mobilenet_v2():
    return MobileNetV2(alpha=0.35, include_top=False, input_shape=(32, 32, 3), attention="ce"), \
        {"alpha": 0.35, "include_top": False, "attention": "ce"}


def _vgg16_ssd():
    return VGG16SSD(300, width_multiplier=0.0625), {"image_size": 300, "width_multiplier": 0.0625}


def _feature_extractor():
    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None)
    return FeatureExtractor(base, {"C4": "block_12_add", "C5": "out_relu"}), \
        {"feature_layers": {"C4": "block_12_add", "C5": "out_relu"}}


BACKBONES = [_resnet, _resnet_classifier, _mobilenet_v2, _vgg16_ssd, _feature_extractor]


def _outputs(model, size):
    x = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype("float32")
    return keras.tree.map_structure(keras.ops.convert_to_numpy, model(x))


@pytest.mark.parametrize("make", BACKBONES, ids=lambda f: f.__name__[1:])
def test_config_is_the_constructor_arguments_and_rebuilds_the_same_model(make):
    model, arguments = make()
    assert isinstance(model, Backbone)
    config = model.get_config()
    for key, value in arguments.items():
        assert config[key] == value, key
    serialized = keras.saving.serialize_keras_object(model)
    assert serialized["class_name"] == type(model).__name__
    rebuilt = keras.saving.deserialize_keras_object(serialized)
    assert type(rebuilt) is type(model)
    assert [layer.name for layer in rebuilt.layers] == [layer.name for layer in model.layers]
    rebuilt.set_weights(model.get_weights())
    size = model.input_shape[1]
    keras.tree.map_structure(np.testing.assert_array_equal, _outputs(rebuilt, size), _outputs(model, size))


@pytest.mark.parametrize("make", [_resnet, _vgg16_ssd], ids=lambda f: f.__name__[1:])
def test_keras_file_round_trip(make, tmp_path):
    model, _ = make()
    model.save(tmp_path / "backbone.keras")
    loaded = keras.saving.load_model(tmp_path / "backbone.keras")
    assert type(loaded) is type(model)
    size = model.input_shape[1]
    keras.tree.map_structure(np.testing.assert_array_equal, _outputs(loaded, size), _outputs(model, size))


def test_feature_names():
    assert _resnet()[0].feature_names == ["C2", "C3", "C4", "C5"]
    assert _resnet_classifier()[0].feature_names == []


def test_one_initializer_instance_gives_every_convolution_its_own_values():
    model = VGG16SSD(300, width_multiplier=0.0625, kernel_initializer=keras.initializers.GlorotUniform())
    first, second = model.get_layer("conv1_2").kernel, model.get_layer("conv2_1").kernel
    assert first.shape == second.shape
    assert not np.array_equal(keras.ops.convert_to_numpy(first), keras.ops.convert_to_numpy(second))
