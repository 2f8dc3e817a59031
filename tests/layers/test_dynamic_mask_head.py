"""Tests for keras_cvx.layers.dynamic_mask_head.DynamicMaskHead: the 169 generated parameters
and their split (all weights first, then all biases; weights row-major (out, in)), relative
coordinates (instance minus pixel, at 8 j + 4, divided by the level's size of interest), the
head on 2 instances of 2 images against a NumPy grouped-conv formulation, the harness."""

import numpy as np
import pytest
from keras import ops

from keras_cvx.layers.dynamic_mask_head import DynamicMaskHead
from tests.numpy_layers import aligned_bilinear
from tests.test_case import run_layer_test

SOI = (64, 128, 256, 512, 1024)


def numpy_dynamic_head(features, params, locations, levels, images, channels=8, stride=8, out_stride=4,
                       soi=SOI):
    """AdelaiDet's ``parse_dynamic_params`` + ``mask_heads_forward_with_coords`` for a 3-layer
    head, one instance at a time, with the input Z materialised (coordinates first)."""
    features = np.asarray(features, np.float64)
    params = np.asarray(params, np.float64)
    _, h, w, c = features.shape
    c_in = c + 2
    sizes = [(channels, c_in), (channels, channels), (1, channels)]
    out = []
    for p, (x, y), level, image in zip(params, locations, levels, images):
        weights, start = [], 0
        for o, i in sizes:
            weights.append(p[start : start + o * i].reshape(o, i))
            start += o * i
        biases = []
        for o, _ in sizes:
            biases.append(p[start : start + o])
            start += o
        assert start == len(p)
        xs = stride * np.arange(w) + stride // 2
        ys = stride * np.arange(h) + stride // 2
        dx = np.broadcast_to((x - xs[None, :]) / soi[level], (h, w))
        dy = np.broadcast_to((y - ys[:, None]) / soi[level], (h, w))
        z = np.concatenate([dx[..., None], dy[..., None], features[image]], -1)
        for k, (wk, bk) in enumerate(zip(weights, biases)):
            z = z @ wk.T + bk
            if k < len(sizes) - 1:
                z = np.maximum(z, 0)
        out.append(aligned_bilinear(z[None], stride // out_stride)[0, :, :, 0])
    return np.stack(out)


def test_num_params_and_split():
    head = DynamicMaskHead()
    assert head.num_params == 169  # (8 + 2) * 8 + 8 + 8 * 8 + 8 + 8 + 1
    assert DynamicMaskHead(use_relative_coordinates=False).num_params == 153
    assert DynamicMaskHead(mask_channels=16).num_params == 233
    params = np.arange(2 * 169, dtype="float32").reshape(2, 169)
    weights, biases = head.split_params(ops.convert_to_tensor(params))
    w0, w1, w2 = (np.asarray(ops.convert_to_numpy(w)) for w in weights)
    b0, b1, b2 = (np.asarray(ops.convert_to_numpy(b)) for b in biases)
    assert w0.shape == (2, 8, 10) and w1.shape == (2, 8, 8) and w2.shape == (2, 1, 8)
    # W0[o, i] = p[10 o + i], W1[o, i] = p[80 + 8 o + i], W2[0, i] = p[144 + i]
    assert w0[1, 3, 7] == params[1, 37] and w1[0, 2, 5] == params[0, 80 + 21] and w2[0, 0, 6] == params[0, 150]
    assert b0[0].tolist() == list(range(152, 160)) and b1[0].tolist() == list(range(160, 168))
    assert b2[1].tolist() == [169 + 168]
    with pytest.raises(ValueError, match="169"):
        head.split_params(ops.zeros((1, 168)))


def test_relative_coordinates():
    head = DynamicMaskHead()
    dx, dy = head.relative_coordinates(np.array([[100.0, 36.0], [20.0, 4.0]], "float32"),
                                       np.array([0, 4]), height=2, width=3)
    # pixels at 4, 12, 20 (x) and 4, 12 (y); level 0 divides by 64, level 4 (P7) by 1024
    np.testing.assert_allclose(ops.convert_to_numpy(dx), [[96 / 64, 88 / 64, 80 / 64], [16 / 1024, 8 / 1024, 0]])
    np.testing.assert_allclose(ops.convert_to_numpy(dy), [[32 / 64, 24 / 64], [0, -8 / 1024]])


def test_two_instances_of_two_images_match_numpy():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 5, 6, 8)).astype("float32")
    params = rng.normal(0, 0.7, (2, 169)).astype("float32")
    locations = np.array([[20.0, 12.0], [44.0, 36.0]], "float32")
    levels, images = np.array([0, 2]), np.array([1, 0])
    out = DynamicMaskHead()(features, params, locations, levels, images)
    assert tuple(out.shape) == (2, 10, 12)
    expected = numpy_dynamic_head(features, params, locations, levels, images)
    np.testing.assert_allclose(ops.convert_to_numpy(out), expected, rtol=1e-4, atol=1e-4)
    # without coordinates: the instance location has no effect
    head = DynamicMaskHead(use_relative_coordinates=False, mask_out_stride=8)
    a = head(features, params[:, :153], locations, levels, images)
    b = head(features, params[:, :153], locations + 50.0, levels, images)
    np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    assert tuple(a.shape) == (2, 5, 6)


def test_layer_harness_and_checks():
    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(3, 3, 3, 4)).astype("float32"), rng.normal(0, 0.5, (3, 53)).astype("float32"),
              np.array([[4.0, 4.0], [12.0, 20.0], [8.0, 8.0]], "float32"), np.array([0, 1, 2], "int32"),
              np.array([0, 2, 1], "int32")]  # 3 images so that the batch sizes agree
    head = DynamicMaskHead(mask_channels=4, channels=4)
    assert head.num_params == 53  # 6 * 4 + 4 + 4 * 4 + 4 + 4 * 1 + 1
    run_layer_test(DynamicMaskHead, dict(mask_channels=4, channels=4), inputs, expected_output_shape=(3, 6, 6),
                   expected_num_trainable_weights=0, run_training_check=False,
                   mixed_precision_output_dtype="float32")
    with pytest.raises(ValueError, match="mask_out_stride"):
        DynamicMaskHead(mask_out_stride=3)
    with pytest.raises(ValueError, match="mask_features"):
        DynamicMaskHead().build((1, 4, 4, 6))
