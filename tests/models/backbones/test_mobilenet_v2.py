import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.layers.channel_equilibrium import ChannelEquilibrium
from keras_cvx.layers.dynamic_relu import DynamicReLU
from keras_cvx.layers.rezero import ReZero
from keras_cvx.layers.squeeze_excite import SqueezeExcite
from keras_cvx.models.backbones.mobilenet_v2 import MobileNetV2, make_divisible
from keras_cvx.models.complexity import count_macs, count_parameters
from tests.models.backbones.helpers import assert_keras_round_trip, covers_every_pair, layers_of, pairwise_rows

pytestmark = pytest.mark.single_backend


@pytest.fixture(scope="module")
def mobilenet():
    return MobileNetV2()


def tiny(**kwargs):
    """The small configuration the tiny tests share (same shapes, so JAX compiles once)."""
    return MobileNetV2(**{"alpha": 0.35, "input_shape": (64, 64, 3), "num_classes": 5, **kwargs})


def images(seed, size=64):
    return np.random.default_rng(seed).normal(size=(2, size, size, 3)).astype("float32")


def test_count_and_macs_equal_keras_applications(mobilenet):
    """3,504,872 parameters (torchvision, Keras) and 300.8 M MACs (the paper's "300M")."""
    reference = keras.applications.MobileNetV2(weights=None)
    assert count_parameters(mobilenet) == count_parameters(reference) == 3_504_872
    assert count_macs(mobilenet) == count_macs(reference) == 300_774_272


@pytest.mark.parametrize("alpha", [0.35, 0.75, 1.4])
def test_width_multipliers_match_keras_applications(alpha):
    ours = MobileNetV2(alpha=alpha, input_shape=(32, 32, 3))
    reference = keras.applications.MobileNetV2(alpha=alpha, weights=None, input_shape=(32, 32, 3))
    assert count_parameters(ours) == count_parameters(reference)


def test_make_divisible():
    assert [make_divisible(v) for v in (32 * 0.35, 16 * 0.35, 24 * 0.75, 1280 * 1.4, 100)] == [16, 8, 24, 1792, 104]


def test_dy_relu_replaces_every_relu6(mobilenet):
    """35 ReLU6 (stem, 1 + 2·16 in the blocks, top) become DY-ReLU-B layers with
    1.25·C² + 4.25·C parameters each (R = 4, K = 2)."""
    widths = [layer.output.shape[-1] for layer in layers_of(mobilenet, keras.layers.ReLU)]
    assert len(widths) == 35
    model = MobileNetV2(activation="dy_relu_b")
    assert sorted(layer.channels for layer in layers_of(model, DynamicReLU)) == sorted(widths)
    assert not layers_of(model, keras.layers.ReLU)
    assert count_parameters(model) == 3_504_872 + sum(int(1.25 * c * c + 4.25 * c) for c in widths)


def test_attention_placements():
    ce = layers_of(tiny(attention="ce"), ChannelEquilibrium)
    assert len(ce) == 17
    assert [layer.input.shape[-1] for layer in ce[:3]] == [8, 8, 8]  # after the projection BN (α = 0.35)
    se = layers_of(tiny(attention="se", attention_position="expanded"), SqueezeExcite)
    assert [layer.input.shape[-1] for layer in se[:3]] == [16, 48, 48]  # expanded width t·C_in
    assert se[0].reduction == 4


def test_rezero_gates_the_ten_residual_blocks():
    model = tiny(rezero=True)
    gates = layers_of(model, ReZero)
    assert len(gates) == 10 == len([layer for layer in tiny().layers if isinstance(layer, keras.layers.Add)])
    assert count_parameters(model) == count_parameters(tiny()) + 10
    probe = keras.Model(model.input, [model.get_layer("block1_project_bn").output, model.get_layer("block2_rezero").output])
    before, after = (ops.convert_to_numpy(t) for t in probe(images(0), training=True))
    np.testing.assert_array_equal(after, before)


def test_feature_shapes_and_keras_layer_names():
    model = MobileNetV2(include_top=False, input_shape=(64, 64, 3))
    reference = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(64, 64, 3))
    names = {"C2": "block_2_add", "C3": "block_5_add", "C4": "block_12_add", "C5": "out_relu"}
    outputs = model(images(1, 64))
    for key, size, channels in [("C2", 16, 24), ("C3", 8, 32), ("C4", 4, 96), ("C5", 2, 1280)]:
        assert tuple(outputs[key].shape) == (2, size, size, channels)
        assert tuple(reference.get_layer(names[key]).output.shape[1:]) == (size, size, channels)


ATTENTIONS = [None, "se", "ce"]
ACTIVATIONS = ["relu6", "dy_relu_a", "dy_relu_b", "dy_relu_c"]
POSITIONS = ["output", "expanded"]
COMBINATIONS = pairwise_rows(ATTENTIONS, ACTIVATIONS, POSITIONS, [False, True])


def test_combinations_cover_every_pair_of_options():
    assert covers_every_pair(COMBINATIONS, [ATTENTIONS, ACTIVATIONS, POSITIONS, [False, True]])


@pytest.mark.parametrize("attention, activation, position, rezero", COMBINATIONS)
def test_option_combinations_are_finite(attention, activation, position, rezero):
    model = tiny(attention=attention, activation=activation, attention_position=position, rezero=rezero)
    logits = ops.convert_to_numpy(model(images(2), training=True))
    assert logits.shape == (2, 5)
    assert np.all(np.isfinite(logits))


def test_keras_round_trip_with_every_block():
    assert_keras_round_trip(tiny(attention="ce", activation="dy_relu_c", rezero=True), images(3))


def test_mixed_precision_logits_are_float32():
    keras.config.set_dtype_policy("mixed_float16")
    model = tiny(attention="se", activation="dy_relu_b", rezero=True)
    logits = model(images(4))
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.all(np.isfinite(ops.convert_to_numpy(logits)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"alpha": 0}, "alpha"),
        ({"activation": "relu"}, "activation"),
        ({"attention": "cbam"}, "attention"),
        ({"attention_position": "middle"}, "attention_position"),
        ({"input_shape": (32, 32)}, "input_shape"),
        ({"num_classes": -1}, "num_classes"),
        ({"se_reduction": 0}, "se_reduction"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)
