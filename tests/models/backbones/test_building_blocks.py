import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.layers.channel_equilibrium import ChannelEquilibrium
from keras_cvx.layers.dynamic_relu import DynamicReLU
from keras_cvx.layers.rezero import ReZero
from keras_cvx.layers.squeeze_excite import SqueezeExcite
from keras_cvx.models.backbones.building_blocks import (
    BlockOptions,
    check_input_shape,
    conv_bn,
    kaiming_fan_out,
    model_outputs,
    rezero_residual,
)


def options(activation="relu", attention=None, static="relu"):
    return BlockOptions(activation, attention, static, se_reduction=4, dy_relu_reduction=2)


def last_layer(tensor_fn, shape=(6, 6, 8)):
    inputs = keras.Input(shape)
    model = keras.Model(inputs, tensor_fn(inputs))
    return model, model.layers[-1]


def test_static_activations():
    x = np.linspace(-8, 8, 2 * 6 * 6 * 8).reshape(2, 6, 6, 8).astype("float32")
    relu, _ = last_layer(lambda t: options().activate(t, "act"))
    relu6, _ = last_layer(lambda t: options("relu6", static="relu6").activate(t, "act"))
    np.testing.assert_array_equal(ops.convert_to_numpy(relu(x)), np.maximum(x, 0))
    np.testing.assert_array_equal(ops.convert_to_numpy(relu6(x)), np.clip(x, 0, 6))


@pytest.mark.parametrize("activation, variant", [("dy_relu_a", "A"), ("dy_relu_b", "B"), ("dy_relu_c", "C")])
def test_dynamic_relu_activations(activation, variant):
    _, layer = last_layer(lambda t: options(activation).activate(t, "act"))
    assert isinstance(layer, DynamicReLU)
    assert (layer.variant, layer.reduction, layer.k, layer.name) == (variant, 2, 2, "act")


def test_attention_blocks():
    _, se = last_layer(lambda t: options(attention="se").attend(t, "att"))
    assert isinstance(se, SqueezeExcite) and se.reduction == 4
    _, ce = last_layer(lambda t: options(attention="ce").attend(t, "att", ce_group_size=64))
    assert isinstance(ce, ChannelEquilibrium) and ce.group_size == 64
    inputs = keras.Input((6, 6, 8))
    assert options().attend(inputs, "att") is inputs


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"activation": "gelu"}, "activation"),
        ({"activation": "relu6"}, "activation"),
        ({"attention": "cbam"}, "attention"),
        ({"se_reduction": 0}, "se_reduction"),
        ({"dy_relu_reduction": 1.5}, "dy_relu_reduction"),
    ],
)
def test_bad_options_raise(kwargs, message):
    arguments = {"activation": "relu", "attention": None, "static_activation": "relu", "se_reduction": 16, "dy_relu_reduction": 4}
    with pytest.raises(ValueError, match=message):
        BlockOptions(**{**arguments, **kwargs})


@pytest.mark.parametrize("depthwise", [False, True])
def test_strided_conv_pads_one_pixel_on_every_side_as_pytorch(depthwise):
    """A 3×3/2 all-ones kernel over x: output[i, j] = sum of x padded by 1 on every side over
    rows 2i..2i+2, columns 2j..2j+2 (PyTorch ``padding=1``); Keras "same" would pad only
    bottom/right and start at x[0, 0]."""
    inputs = keras.Input((8, 8, 1))
    full = keras.Model(inputs, conv_bn(inputs, None if depthwise else 1, 3, 2, "c", depthwise=depthwise))
    model = keras.Model(inputs, full.get_layer("c_conv").output)
    conv = model.get_layer("c_conv")
    conv.set_weights([np.ones_like(conv.get_weights()[0])])
    assert isinstance(model.get_layer("c_pad"), keras.layers.ZeroPadding2D)
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 1)).astype("float32")
    padded = np.pad(x[0, :, :, 0], 1)
    expected = np.array([[padded[2 * i : 2 * i + 3, 2 * j : 2 * j + 3].sum() for j in range(4)] for i in range(4)])
    np.testing.assert_allclose(ops.convert_to_numpy(model(x))[0, :, :, 0], expected, rtol=1e-5, atol=1e-5)


def test_stride_one_conv_is_same_padded_and_bn_uses_pytorch_defaults():
    inputs = keras.Input((5, 5, 3))
    model = keras.Model(inputs, conv_bn(inputs, 4, 3, 1, "c"))
    assert model.output.shape == (None, 5, 5, 4)
    assert model.get_layer("c_conv").padding == "same" and not model.get_layer("c_conv").use_bias
    norm = model.get_layer("c_bn")
    assert (norm.epsilon, norm.momentum) == (1e-5, 0.9)


def test_kaiming_fan_out_standard_deviation():
    kernel = ops.convert_to_numpy(kaiming_fan_out()((3, 3, 64, 256)))
    np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / (9 * 256)), rtol=0.02)
    assert abs(kernel.mean()) < 1e-3


def test_rezero_residual_is_identity_then_gates_the_branch():
    inputs = keras.Input((4, 4, 8))
    outputs = rezero_residual(inputs, lambda t: keras.layers.Dense(8, name="f")(t), "block")
    model = keras.Model(inputs, outputs)
    gate = model.get_layer("block_rezero")
    assert isinstance(gate, ReZero) and gate.layer.name == "block_branch"
    x = np.random.default_rng(1).normal(size=(2, 4, 4, 8)).astype("float32")
    np.testing.assert_array_equal(ops.convert_to_numpy(model(x)), x)
    gate.alpha.assign(0.5)
    kernel, bias = gate.layer.get_layer("f").get_weights()
    np.testing.assert_allclose(ops.convert_to_numpy(model(x)), x + 0.5 * (x @ kernel + bias), rtol=1e-5, atol=1e-6)


def test_rezero_residual_with_a_projection_shortcut():
    inputs = keras.Input((4, 4, 8))
    projection = keras.layers.Conv2D(6, 1, strides=2, name="projection")(inputs)
    branch = lambda t: keras.layers.Conv2D(6, 3, strides=2, padding="same", name="f")(t)  # noqa: E731
    model = keras.Model(inputs, rezero_residual(inputs, branch, "block", shortcut=projection))
    x = np.random.default_rng(2).normal(size=(2, 4, 4, 8)).astype("float32")
    p_kernel, p_bias = model.get_layer("projection").get_weights()
    expected = x[:, ::2, ::2] @ p_kernel[0, 0] + p_bias
    np.testing.assert_allclose(ops.convert_to_numpy(model(x)), expected, rtol=1e-5, atol=1e-5)
    gate = model.get_layer("block_rezero")
    gate.alpha.assign(0.5)
    branch_out = ops.convert_to_numpy(gate.layer(x))
    np.testing.assert_allclose(ops.convert_to_numpy(model(x)), expected + 0.5 * branch_out, rtol=1e-5, atol=1e-5)


def test_model_outputs():
    inputs = keras.Input((4, 4, 3))
    features = {"C5": keras.layers.Conv2D(6, 1)(inputs)}
    backbone = keras.Model(inputs, model_outputs(features, False, 10, None))
    assert isinstance(backbone.output, dict) and backbone.output["C5"].shape == (None, 4, 4, 6)
    classifier = keras.Model(inputs, model_outputs(features, True, 10, "softmax"))
    probabilities = ops.convert_to_numpy(classifier(np.ones((2, 4, 4, 3), "float32")))
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-6)
    assert classifier.get_layer("predictions").dtype_policy.name == "float32"
    with pytest.raises(ValueError, match="num_classes"):
        model_outputs(features, True, 0, None)


@pytest.mark.parametrize("shape", [(224, 224), [224, 224, None], "224"])
def test_bad_input_shape_raises(shape):
    with pytest.raises(ValueError, match="input_shape"):
        check_input_shape(shape)
