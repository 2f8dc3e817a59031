import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.layers.slim_conv import SlimConv2D
from tests.test_case import run_layer_test

EPSILON = 1e-5


def numpy_conv(x, kernel, stride=1, pad=0, dilation=1, bias=None):
    """NHWC cross-correlation with `pad` zeros on every side (PyTorch ``padding=pad``)."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    k = kernel.shape[0]
    span = dilation * (k - 1) + 1
    out_h = (x.shape[1] - span) // stride + 1
    out_w = (x.shape[2] - span) // stride + 1
    y = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
    for i in range(k):
        for j in range(k):
            patch = x[:, i * dilation :, j * dilation :, :][:, : out_h * stride : stride, : out_w * stride : stride, :]
            y += patch @ kernel[i, j]
    return y if bias is None else y + bias


def numpy_batch_norm(x, norm, training):
    gamma, beta, moving_mean, moving_var = (np.asarray(v, np.float64) for v in norm.get_weights())
    if training:
        axes = tuple(range(x.ndim - 1))
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    else:
        mean, var = moving_mean, moving_var
    return (x - mean) / np.sqrt(var + EPSILON) * gamma + beta


def numpy_slim_conv(x, layer, training=False):
    """SlimConv written from the spec (§2): weights, flipping, folding, two paths, fuse."""
    def kernel(conv):
        return np.asarray(ops.convert_to_numpy(conv.kernel), np.float64)

    c = x.shape[-1]
    s, d = layer.strides, layer.dilation_rate
    pooled = x.mean(axis=(1, 2), keepdims=True)
    hidden = np.maximum(numpy_batch_norm(numpy_conv(pooled, kernel(layer.fc_reduce)), layer.fc_norm, training), 0)
    bias = np.asarray(ops.convert_to_numpy(layer.fc_expand.bias), np.float64)
    w = 1.0 / (1.0 + np.exp(-numpy_conv(hidden, kernel(layer.fc_expand), bias=bias)))  # (B, 1, 1, C)
    w_flipped = w[..., ::-1]
    x1, x2 = x * w, x * w_flipped
    top_in = x1[..., : c // 2] + x1[..., c // 2 :]
    bottom_in = x2[..., : c // 2] + x2[..., c // 2 :]
    top = numpy_batch_norm(numpy_conv(top_in, kernel(layer.top_conv), s, d, d), layer.top_norm, training)
    bottom = np.maximum(numpy_batch_norm(numpy_conv(bottom_in, kernel(layer.bottom_reduce)), layer.bottom_reduce_norm, training), 0)
    bottom = numpy_batch_norm(numpy_conv(bottom, kernel(layer.bottom_conv), s, d, d), layer.bottom_norm, training)
    return np.concatenate([top, bottom], axis=-1), (top_in, bottom_in)


def randomize_norms(layer, seed):
    """Non-trivial γ, β and moving statistics, so inference mode checks them too."""
    rng = np.random.default_rng(seed)
    for norm in (layer.fc_norm, layer.top_norm, layer.bottom_reduce_norm, layer.bottom_norm):
        n = norm.gamma.shape[0]
        norm.set_weights(
            [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n), rng.normal(0, 0.2, n), rng.uniform(0.5, 2.0, n)]
        )
    layer.fc_expand.bias.assign(rng.normal(0, 0.5, layer.fc_expand.bias.shape[0]).astype("float32"))


def plain_conv_bn_params(width):
    """Trainable parameters of the ResNet 3×3 conv (no bias) + BN that SlimConv replaces."""
    conv = keras.layers.Conv2D(width, 3, use_bias=False)
    conv.build((None, 7, 7, width))
    norm = keras.layers.BatchNormalization()
    norm.build((None, 7, 7, width))
    return conv.count_params() + sum(int(np.prod(w.shape)) for w in norm.trainable_weights)


def trainable_params(layer):
    return sum(int(np.prod(w.shape)) for w in layer.trainable_weights)


@pytest.mark.parametrize(
    "kwargs, shape, expected_shape",
    [({"reduction": 8}, (2, 6, 6, 32), (2, 6, 6, 24)), ({"strides": 2, "reduction": 4}, (2, 8, 7, 16), (2, 4, 4, 12))],
)
def test_harness(kwargs, shape, expected_shape):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    run_layer_test(
        SlimConv2D,
        kwargs,
        x,
        expected_output_shape=expected_shape,
        expected_num_trainable_weights=14,
        expected_num_non_trainable_weights=8,
    )


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        ({"reduction": 8}, (2, 6, 5, 32)),
        ({"strides": 2, "reduction": 8}, (2, 8, 8, 32)),  # even size: symmetric padding matters
        ({"strides": 2, "reduction": 4}, (3, 7, 6, 16)),
        ({"dilation_rate": 2, "reduction": 4}, (2, 7, 7, 16)),
    ],
)
@pytest.mark.parametrize("training", [False, True])
def test_matches_numpy(kwargs, shape, training):
    x = np.random.default_rng(1).normal(size=shape).astype("float32")
    keras.utils.set_random_seed(2)
    layer = SlimConv2D(**kwargs)
    layer.build(shape)
    randomize_norms(layer, seed=3)
    y = ops.convert_to_numpy(layer(x, training=training))
    expected, _ = numpy_slim_conv(x.astype(np.float64), layer, training=training)
    assert y.shape == expected.shape == (shape[0], -(-shape[1] // layer.strides), -(-shape[2] // layer.strides), 3 * shape[3] // 4)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_flipped_weights_pair_channel_c_with_w_of_c_minus_one_minus_c():
    """Spec §5: non-constant w makes the folded inputs differ (flip over the full C axis)."""
    x = np.random.default_rng(4).normal(size=(2, 5, 5, 32)).astype("float32")
    layer = SlimConv2D(reduction=8)
    layer.build(x.shape)
    randomize_norms(layer, seed=5)
    top, bottom = (ops.convert_to_numpy(t) for t in layer.reconstruct(x))
    _, (top_in, bottom_in) = numpy_slim_conv(x.astype(np.float64), layer)
    np.testing.assert_allclose(top, top_in, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bottom, bottom_in, rtol=1e-5, atol=1e-5)
    assert np.abs(top - bottom).max() > 1e-2


def test_constant_half_weights_make_both_folded_inputs_equal():
    """Spec §5: zero kernel and bias in the last weights conv give w ≡ 0.5 and
    T_in = U_in = 0.5·(X[:C/2] + X[C/2:])."""
    x = np.random.default_rng(6).normal(size=(2, 5, 5, 32)).astype("float32")
    layer = SlimConv2D()
    layer.build(x.shape)
    layer.fc_expand.kernel.assign(np.zeros(layer.fc_expand.kernel.shape, "float32"))
    layer.fc_expand.bias.assign(np.zeros(32, "float32"))
    top, bottom = (ops.convert_to_numpy(t) for t in layer.reconstruct(x, training=True))
    expected = 0.5 * (x[..., :16] + x[..., 16:])
    np.testing.assert_allclose(top, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(top, bottom)


def test_parameter_counts_match_the_spec():
    """Spec §2.1: 3C² + 3.0625·C per module (BN γ/β and the weights-branch bias counted),
    12,484 against 36,992 for C = 64. Spec §5: in every ResNet bottleneck of width w the
    3×3 conv + BN becomes SlimConv2D(w) and conv3 reads 3w/4 channels instead of w."""
    widths = (64, 128, 256, 512)
    saved_per_block = {}
    for width in widths:
        layer = SlimConv2D()
        layer.build((None, 7, 7, width))
        assert trainable_params(layer) == 3 * width**2 + 3.0625 * width
        saved_per_block[width] = plain_conv_bn_params(width) - trainable_params(layer) + width // 4 * 4 * width
    assert 3 * 64**2 + 3.0625 * 64 == 12_484 and plain_conv_bn_params(64) == 36_992
    for blocks, resnet, sc_resnet in (
        ((3, 4, 6, 3), 25_557_032, 16_758_740),  # SC-ResNet-50
        ((3, 4, 23, 3), 44_549_160, 27_956_708),  # SC-ResNet-101
        ((3, 8, 36, 3), 60_192_808, 37_181_908),  # SC-ResNet-152
    ):
        assert resnet - sum(count * saved_per_block[w] for w, count in zip(widths, blocks)) == sc_resnet


def test_spec_shapes():
    """Spec §5: (2,56,56,64) → (2,56,56,48) and, stride 2, (2,56,56,128) → (2,28,28,96)."""
    x = np.random.default_rng(7).normal(size=(2, 56, 56, 64)).astype("float32")
    assert tuple(ops.shape(SlimConv2D()(x))) == (2, 56, 56, 48)
    layer = SlimConv2D(strides=2)
    assert tuple(layer(keras.Input((56, 56, 128))).shape) == (None, 28, 28, 96)
    assert layer.compute_output_shape((2, 56, 56, 128)) == (2, 28, 28, 96)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"strides": 3}, "strides"),
        ({"reduction": 0}, "reduction"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"momentum": 1.0}, "momentum"),
        ({"dilation_rate": 0}, "dilation_rate"),
        ({"dilation_rate": 2, "strides": 2}, "dilation_rate"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        SlimConv2D(**kwargs)


@pytest.mark.parametrize("shape", [(2, 4, 4, 30), (2, 4, 4, 16), (2, 4, 32)])
def test_bad_inputs_are_rejected(shape):
    """C not divisible by 4, C < reduction (32), and rank 3."""
    with pytest.raises(ValueError, match="inputs"):
        SlimConv2D()(np.zeros(shape, "float32"))
