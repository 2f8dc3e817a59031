"""Tests for keras_cvx.heads.pointins.PointINSMaskHead: the 2,622,977 parameters of the
default decoder, the initialisation (Kaiming fan_out convs, N(0, 0.001) predictor, zero
biases), the forward pass against a NumPy formulation (half-pixel bilinear resize, 'same'
convs, 2x2 stride-2 transposed conv, 1x1 predictor), the resize skipped at k = resize,
argument errors and the shared harness."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.heads.pointins import PointINSMaskHead
from tests.numpy_layers import conv2d
from tests.test_case import run_layer_test


def _resize_matrix(size_in, size_out):
    """``[size_out, size_in]`` half-pixel bilinear interpolation (edge-clamped, no antialias)."""
    matrix = np.zeros((size_out, size_in))
    for i in range(size_out):
        x = min(max((i + 0.5) * size_in / size_out - 0.5, 0.0), size_in - 1)
        low = int(np.floor(x))
        high = min(low + 1, size_in - 1)
        matrix[i, low] += 1 - (x - low)
        matrix[i, high] += x - low
    return matrix


def numpy_head(x, weights, resize, num_convs):
    """The decoder, in float64: resize -> [conv3x3 + ReLU] x n -> deconv2x2/2 + ReLU -> 1x1."""
    x = np.asarray(x, np.float64)
    k = x.shape[1]
    r = _resize_matrix(k, resize)
    x = np.einsum("ia,pabc,jb->pijc", r, x, r)
    for i in range(num_convs):
        x = np.maximum(conv2d(x, weights[2 * i], weights[2 * i + 1]), 0)
    kernel, bias = weights[2 * num_convs], weights[2 * num_convs + 1]  # [2, 2, out, in]
    p, h, w, _ = x.shape
    up = np.zeros((p, 2 * h, 2 * w, kernel.shape[2]))
    for a in range(2):
        for b in range(2):
            up[:, a::2, b::2, :] = np.einsum("phwc,oc->phwo", x, kernel[a, b])
    up = np.maximum(up + bias, 0)
    predictor, predictor_bias = weights[-2], weights[-1]
    return (np.einsum("phwc,co->phwo", up, predictor[0, 0]) + predictor_bias)[..., 0]


def test_parameter_count_and_initialisation():
    head = PointINSMaskHead()
    head.build((None, 3, 3, 256))
    assert head.count_params() == 4 * (256 * 256 * 9 + 256) + (256 * 256 * 4 + 256) + 257 == 2_622_977
    assert head.compute_output_shape((100, 3, 3, 256)) == (100, 28, 28)
    predictor = np.asarray(ops.convert_to_numpy(head.predictor.kernel))
    assert predictor.shape == (1, 1, 256, 1)
    assert abs(predictor.std() - 0.001) < 0.00015
    conv = np.asarray(ops.convert_to_numpy(head.convs[0].kernel))
    assert abs(conv.std() - np.sqrt(2.0 / (9 * 256))) < 0.002  # Kaiming normal, fan_out = 9 * 256
    deconv = np.asarray(ops.convert_to_numpy(head.deconv.kernel))
    assert abs(deconv.std() - np.sqrt(2.0 / (4 * 256))) < 0.002
    later = [np.asarray(ops.convert_to_numpy(c.kernel)) for c in head.convs[1:]]  # 3 kernels [3, 3, 256, 256]
    assert not np.array_equal(later[0], later[1]) and not np.array_equal(later[1], later[2])
    for layer in head.convs + [head.deconv, head.predictor]:
        assert not np.any(ops.convert_to_numpy(layer.bias))


def test_forward_matches_numpy():
    rng = np.random.default_rng(0)
    head = PointINSMaskHead(resize=6, num_convs=2, channels=5)
    x = rng.normal(size=(3, 3, 3, 4)).astype("float32")
    head.build(x.shape)
    weights = [rng.normal(0, 0.4, w.shape).astype("float32") for w in head.get_weights()]
    head.set_weights(weights)
    out = np.asarray(ops.convert_to_numpy(head(x)))
    assert out.shape == (3, 12, 12)
    np.testing.assert_allclose(out, numpy_head(x, weights, 6, 2), rtol=1e-4, atol=1e-4)


def test_default_output_shape_and_resize_skipped_at_the_template_size(monkeypatch):
    rng = np.random.default_rng(1)
    head = PointINSMaskHead(num_convs=1, channels=4)
    out = head(rng.normal(size=(2, 3, 3, 4)).astype("float32"))
    assert tuple(out.shape) == (2, 28, 28)
    x = rng.normal(size=(2, 14, 14, 4)).astype("float32")

    def fail(*args, **kwargs):
        raise AssertionError("resize called although k == resize")

    monkeypatch.setattr(keras.ops.image, "resize", fail)
    out = np.asarray(ops.convert_to_numpy(head(x)))
    np.testing.assert_allclose(out, numpy_head(x, head.get_weights(), 14, 1), rtol=1e-4, atol=1e-5)


def test_argument_errors_name_the_argument():
    for kwargs, name in [(dict(resize=0), "resize"), (dict(num_convs=-1), "num_convs"),
                         (dict(num_convs=1.0), "num_convs"), (dict(channels=None), "channels")]:
        with pytest.raises(ValueError, match=name):
            PointINSMaskHead(**kwargs)
    with pytest.raises(ValueError, match="features"):
        PointINSMaskHead().build((4, 3, 2, 8))
    with pytest.raises(ValueError, match="features"):
        PointINSMaskHead().build((4, 3, 3))


def test_layer_harness():
    rng = np.random.default_rng(2)
    run_layer_test(PointINSMaskHead, dict(resize=4, num_convs=1, channels=4),
                   rng.normal(size=(2, 3, 3, 4)).astype("float32"), expected_output_shape=(2, 8, 8),
                   expected_num_trainable_weights=6)
