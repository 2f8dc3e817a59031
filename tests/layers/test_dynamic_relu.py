import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.layers import DynamicReLU
from tests.test_case import run_layer_test


def numpy_dynamic_relu(x, layer):
    """DY-ReLU written independently from the paper's equations, using the layer's weights."""
    w1, c1 = (np.asarray(v) for v in layer.squeeze.get_weights())
    w2, c2 = (np.asarray(v) for v in layer.coefficients.get_weights())
    k, channels = layer.k, x.shape[-1]
    pooled = x.reshape(x.shape[0], -1, channels).mean(axis=1)
    theta = np.maximum(pooled @ w1 + c1, 0.0) @ w2 + c2
    delta = 2.0 / (1.0 + np.exp(-theta)) - 1.0
    width = 1 if layer.variant == "A" else channels
    y = np.full(x.shape, -np.inf)
    for piece in range(k):
        a = layer.init_a[piece] + layer.lambda_a * delta[:, piece * width : (piece + 1) * width]
        b = layer.init_b[piece] + layer.lambda_b * delta[:, (k + piece) * width : (k + piece + 1) * width]
        shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (width,)
        y = np.maximum(y, x * a.reshape(shape) + b.reshape(shape))
    if layer.variant == "C":
        y = y * numpy_spatial_attention(x, layer)
    return y


def numpy_spatial_attention(x, layer):
    ws, cs = (np.asarray(v) for v in layer.spatial.get_weights())
    z = (x @ ws + cs).reshape(x.shape[0], -1) / layer.temperature
    softmax = np.exp(z - z.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    positions = z.shape[1]
    return np.minimum(softmax * positions / 3.0, 1.0).reshape(x.shape[:-1] + (1,))


@pytest.mark.parametrize("variant", ["A", "B", "C"])
def test_harness(variant):
    x = np.random.default_rng(0).normal(size=(2, 5, 6, 8)).astype("float32")
    run_layer_test(
        DynamicReLU,
        {"variant": variant, "reduction": 4},
        x,
        expected_output_shape=(2, 5, 6, 8),
        expected_num_trainable_weights=4 + (2 if variant == "C" else 0),
    )


@pytest.mark.parametrize("variant", ["A", "B", "C"])
@pytest.mark.parametrize("shape", [(3, 7, 5, 16), (2, 9, 12)])
def test_matches_numpy_with_random_weights(variant, shape):
    x = np.random.default_rng(1).normal(size=shape).astype("float32")
    layer = DynamicReLU(variant=variant, reduction=4)
    keras.utils.set_random_seed(3)
    y = ops.convert_to_numpy(layer(x))
    # Random weights move the pieces well away from plain ReLU.
    assert np.abs(y - np.maximum(x, 0)).max() > 1e-2
    np.testing.assert_allclose(y, numpy_dynamic_relu(x.astype(np.float64), layer), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["A", "B"])
def test_init_as_relu_is_relu(variant):
    x = np.random.default_rng(2).normal(size=(2, 4, 4, 12)).astype("float32")
    y = DynamicReLU(variant=variant, init_as_relu=True)(x)
    np.testing.assert_array_equal(ops.convert_to_numpy(y), np.maximum(x, 0))


def test_init_as_relu_type_c_is_relu_times_attention():
    x = np.random.default_rng(3).normal(size=(2, 4, 6, 12)).astype("float32")
    layer = DynamicReLU(variant="C", init_as_relu=True)
    y = ops.convert_to_numpy(layer(x))
    attention = numpy_spatial_attention(x.astype(np.float64), layer)
    np.testing.assert_allclose(y, np.maximum(x, 0) * attention, rtol=1e-6, atol=1e-6)


def test_type_c_constant_logits_give_one_third():
    """A constant z map: softmax = 1/HW, π = min(1/3, 1) = 1/3 (spec §5)."""
    layer = DynamicReLU(variant="C", init_as_relu=True)
    x = np.random.default_rng(4).normal(size=(1, 3, 5, 8)).astype("float32")
    layer.build(x.shape)
    layer.spatial.kernel.assign(np.zeros((8, 1), "float32"))
    y = ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(y, np.maximum(x, 0) / 3.0, rtol=1e-6)


def test_hard_sigmoid_normalisation_is_exact_relu_at_zero_logits():
    x = np.random.default_rng(5).normal(size=(2, 3, 3, 4)).astype("float32")
    y = DynamicReLU(normalization="hard_sigmoid", init_as_relu=True)(x)
    np.testing.assert_array_equal(ops.convert_to_numpy(y), np.maximum(x, 0))


@pytest.mark.parametrize(
    "variant, channels, reduction, expected",
    [("B", 64, 4, 5392), ("B", 256, 4, 83008), ("B", 64, 8, 2824), ("A", 64, 4, 64 * 16 + 16 + 16 * 4 + 4)],
)
def test_parameter_counts_match_spec(variant, channels, reduction, expected):
    layer = DynamicReLU(variant=variant, reduction=reduction)
    layer.build((None, 8, 8, channels))
    assert layer.count_params() == expected


def test_type_c_adds_a_one_by_one_convolution():
    layer = DynamicReLU(variant="C", reduction=4)
    layer.build((None, 8, 8, 64))
    assert layer.count_params() == 5392 + 64 + 1


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"variant": "D"}, "variant"),
        ({"reduction": 0}, "reduction"),
        ({"k": 3}, "init_a"),
        ({"temperature": 0.0}, "temperature"),
        ({"normalization": "tanh"}, "normalization"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        DynamicReLU(**kwargs)


def test_rank_two_input_is_rejected():
    with pytest.raises(ValueError, match="inputs"):
        DynamicReLU()(np.zeros((2, 4), "float32"))
