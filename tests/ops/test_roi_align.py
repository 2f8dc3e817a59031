import functools
import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.ops.roi_align import bilinear_sample, fpn_level, multilevel_roi_align, roi_align
from tests.ops.compiled import run_compiled


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _ref_bilinear(fmap, y, x):
    """Scalar bilinear value of fmap [H, W, C], following Detectron2's CPU kernel description."""
    h, w = fmap.shape[:2]
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(fmap.shape[-1])
    y, x = max(y, 0.0), max(x, 0.0)
    yl, xl = int(y), int(x)
    if yl >= h - 1:
        yl = yh = h - 1
        y = float(yl)
    else:
        yh = yl + 1
    if xl >= w - 1:
        xl = xh = w - 1
        x = float(xl)
    else:
        xh = xl + 1
    ly, lx = y - yl, x - xl
    return ((1 - ly) * (1 - lx) * fmap[yl, xl] + (1 - ly) * lx * fmap[yl, xh]
            + ly * (1 - lx) * fmap[yh, xl] + ly * lx * fmap[yh, xh])


def _ref_roi_align(fmap, box, out_h, out_w, scale, ratio, aligned):
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = [c * scale - offset for c in box]
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
        rw, rh = max(rw, 1.0), max(rh, 1.0)
    bw, bh = rw / out_w, rh / out_h
    out = np.zeros((out_h, out_w, fmap.shape[-1]))
    for ph in range(out_h):
        for pw in range(out_w):
            acc = 0.0
            for iy in range(ratio):
                for ix in range(ratio):
                    yy = y1 + ph * bh + (iy + 0.5) * bh / ratio
                    xx = x1 + pw * bw + (ix + 0.5) * bw / ratio
                    acc = acc + _ref_bilinear(fmap, yy, xx)
            out[ph, pw] = acc / ratio**2
    return out


FEATURES = np.random.default_rng(0).normal(size=(2, 7, 9, 3)).astype("float32")
# inside, crossing the left/top border, crossing right/bottom, tiny, fully outside
BOXES = np.array(
    [[[4, 4, 20, 16], [-6, -3, 10, 12], [20, 14, 40, 34]],
     [[10, 6, 11, 7], [-30, -30, -10, -12], [0, 0, 36, 28]]], "float32")


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("ratio", [1, 2, 3])
def test_matches_numpy_reference(aligned, ratio):
    out = _np(roi_align(FEATURES, BOXES, (2, 3), 0.25, ratio, aligned))
    assert out.shape == (2, 3, 2, 3, 3)
    for b in range(2):
        for r in range(3):
            expected = _ref_roi_align(FEATURES[b], BOXES[b, r], 2, 3, 0.25, ratio, aligned)
            np.testing.assert_allclose(out[b, r], expected, atol=1e-5, err_msg=f"box {b},{r}")
    assert np.all(out[1, 1] == 0.0)  # fully outside


def test_compiled_and_float16():
    fn = functools.partial(roi_align, output_size=3, spatial_scale=0.25, sampling_ratio=2)
    eager = _np(fn(FEATURES, BOXES))
    np.testing.assert_allclose(run_compiled(fn, FEATURES, BOXES), eager, atol=1e-5)
    half = fn(FEATURES.astype("float16"), BOXES.astype("float16"))
    assert ops.dtype(half) == "float16"
    np.testing.assert_allclose(_np(half).astype("float32"), eager, atol=1e-2)


def test_bilinear_sample_points_and_gradient_path():
    fmap = FEATURES[:1]
    y = np.array([[0.0, 3.0, 2.5, -0.5, -1.5, 6.6, 7.0]], "float32")
    x = np.array([[0.0, 4.0, 1.25, 3.0, 0.0, 8.5, 9.5]], "float32")
    out = _np(bilinear_sample(fmap, y, x))
    assert out.shape == (1, 7, 3)
    for k in range(7):
        np.testing.assert_allclose(out[0, k], _ref_bilinear(fmap[0], y[0, k], x[0, k]), atol=1e-6)
    np.testing.assert_allclose(out[0, 1], fmap[0, 3, 4])  # integer point = pixel value


def test_fpn_level_formula():
    sizes = np.array([10, 111, 112, 223, 224, 447, 448, 1000, 0], "float32")
    boxes = np.stack([np.zeros_like(sizes), np.zeros_like(sizes), sizes, sizes], -1)
    expected = [min(5, max(2, math.floor(4 + math.log2(s / 224 + 1e-8)))) for s in sizes]
    np.testing.assert_array_equal(_np(fpn_level(boxes)), expected)
    assert expected == [2, 2, 3, 3, 4, 4, 5, 5, 2]


def test_multilevel_uses_assigned_level():
    rng = np.random.default_rng(1)
    pyramid = [rng.normal(size=(1, 64 // 2**k, 64 // 2**k, 2)).astype("float32") for k in range(2, 6)]
    boxes = np.array([[[0, 0, 40, 40], [0, 0, 150, 120], [10, 10, 250, 250], [5, 5, 60, 500]]], "float32")
    fn = functools.partial(multilevel_roi_align, output_size=2, sampling_ratio=2)
    out = run_compiled(lambda *p: fn(list(p[:-1]), p[-1]), *pyramid, boxes)
    levels = _np(fpn_level(boxes))[0]
    assert list(levels) == [2, 3, 4, 3]
    for r in range(4):
        expected = _ref_roi_align(pyramid[levels[r] - 2][0], boxes[0, r], 2, 2, 2.0 ** -levels[r], 2, True)
        np.testing.assert_allclose(out[0, r], expected, atol=1e-5)


def test_validation():
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align(FEATURES, BOXES, 2, 0.25, sampling_ratio=0)
    with pytest.raises(ValueError, match="output_size"):
        roi_align(FEATURES, BOXES, 0, 0.25)
    with pytest.raises(ValueError, match="spatial_scale"):
        roi_align(FEATURES, BOXES, 2, 0.0)


def _ref_roi_align_transpose(shape, box, upstream, scale, ratio, aligned):
    """d sum(out * upstream) / d fmap of one box, as a NumPy scatter-add of the bilinear weights."""
    h, w = shape[:2]
    out_h, out_w = upstream.shape[:2]
    grad = np.zeros(shape)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = [c * scale - offset for c in box]
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
        rw, rh = max(rw, 1.0), max(rh, 1.0)
    for ph in range(out_h):
        for pw in range(out_w):
            for iy in range(ratio):
                for ix in range(ratio):
                    y = y1 + ph * rh / out_h + (iy + 0.5) * rh / out_h / ratio
                    x = x1 + pw * rw / out_w + (ix + 0.5) * rw / out_w / ratio
                    if y < -1.0 or y > h or x < -1.0 or x > w:
                        continue
                    y, x = min(max(y, 0.0), h - 1.0), min(max(x, 0.0), w - 1.0)
                    yl, xl = int(y), int(x)
                    yh, xh = min(yl + 1, h - 1), min(xl + 1, w - 1)
                    ly, lx = y - yl, x - xl
                    g = upstream[ph, pw] / ratio**2
                    grad[yl, xl] += (1 - ly) * (1 - lx) * g
                    grad[yl, xh] += (1 - ly) * lx * g
                    grad[yh, xl] += ly * (1 - lx) * g
                    grad[yh, xh] += ly * lx * g
    return grad


def _feature_gradient(fn, features, upstream, *args):
    """d sum(fn(features, *args) * upstream) / d features, compiled, in the backend's way."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        def grad(f, u, *a):
            with tf.GradientTape() as tape:
                tape.watch(f)
                loss = tf.reduce_sum(fn(f, *a) * u)
            return tape.gradient(loss, f)

        return np.asarray(tf.function(grad, jit_compile=True)(features, upstream, *args))
    import jax

    return np.asarray(jax.jit(jax.grad(lambda f, u, *a: jax.numpy.sum(fn(f, *a) * u)))(features, upstream, *args))


@pytest.mark.parametrize("aligned, ratio", [(True, 2), (False, 1), (False, 3)])
def test_feature_gradient_is_the_numpy_scatter_add(aligned, ratio):
    upstream = np.random.default_rng(2).normal(size=(2, 3, 2, 3, 3)).astype("float32")
    fn = functools.partial(roi_align, output_size=(2, 3), spatial_scale=0.25, sampling_ratio=ratio, aligned=aligned)
    grad = _feature_gradient(lambda f, b: fn(f, b), FEATURES, upstream, BOXES)
    expected = np.zeros(FEATURES.shape)
    for b in range(2):
        for r in range(3):
            expected[b] += _ref_roi_align_transpose(FEATURES.shape[1:], BOXES[b, r], upstream[b, r], 0.25, ratio, aligned)
    np.testing.assert_allclose(grad, expected, atol=1e-5)


def test_feature_gradient_matches_finite_differences():
    """RoIAlign is linear in the features: central differences are exact up to rounding."""
    upstream = np.random.default_rng(3).normal(size=(2, 3, 2, 2, 3)).astype("float32")
    fn = functools.partial(roi_align, output_size=2, spatial_scale=0.25, sampling_ratio=2)
    grad = _feature_gradient(lambda f, b: fn(f, b), FEATURES, upstream, BOXES)
    for index in [(0, 1, 1, 0), (0, 3, 4, 2), (1, 2, 2, 1), (1, 0, 0, 0), (0, 6, 8, 1)]:
        step = np.zeros_like(FEATURES)
        step[index] = 0.5
        plus = np.sum(_np(fn(FEATURES + step, BOXES)) * upstream)
        minus = np.sum(_np(fn(FEATURES - step, BOXES)) * upstream)
        np.testing.assert_allclose(grad[index], (plus - minus) / 1.0, atol=2e-4, err_msg=str(index))


def test_multilevel_gradient_reaches_each_box_level_only():
    rng = np.random.default_rng(4)
    pyramid = [rng.normal(size=(1, 64 // 2**k, 64 // 2**k, 2)).astype("float32") for k in range(2, 6)]
    boxes = np.array([[[0, 0, 40, 40], [0, 0, 150, 120], [10, 10, 250, 250]]], "float32")
    upstream = rng.normal(size=(1, 3, 2, 2, 2)).astype("float32")
    levels = _np(fpn_level(boxes))[0]
    for k in range(4):
        def fn(level, b, k=k):
            others = [ops.convert_to_tensor(p) for p in pyramid]
            others[k] = level
            return multilevel_roi_align(others, b, 2, sampling_ratio=2)

        grad = _feature_gradient(fn, pyramid[k], upstream, boxes)
        expected = np.zeros(pyramid[k].shape[1:])
        for r in np.flatnonzero(levels == k + 2):
            expected += _ref_roi_align_transpose(pyramid[k].shape[1:], boxes[0, r], upstream[0, r], 2.0 ** -(k + 2), 2,
                                                 True)
        np.testing.assert_allclose(grad[0], expected, atol=1e-5, err_msg=f"level {k + 2}")


def test_multilevel_with_given_levels():
    rng = np.random.default_rng(5)
    pyramid = [rng.normal(size=(2, 32 // 2**k, 32 // 2**k, 2)).astype("float32") for k in range(2, 5)]
    boxes = rng.uniform(0, 24, (2, 3, 2)).astype("float32")
    boxes = np.concatenate([boxes, boxes + 8], -1)
    levels = np.array([[2, 3, 4], [4, 4, 2]], "int32")
    out = _np(multilevel_roi_align(pyramid, boxes, 2, levels=levels))
    for b in range(2):
        for r in range(3):
            k = levels[b, r]
            expected = _ref_roi_align(pyramid[k - 2][b], boxes[b, r], 2, 2, 2.0**-k, 2, True)
            np.testing.assert_allclose(out[b, r], expected, atol=1e-5)


def test_static_shape_errors_name_the_arguments():
    with pytest.raises(ValueError, match=r"`features` holds 1 images but `boxes` holds boxes for 2"):
        roi_align(FEATURES[:1], BOXES, 2, 0.25)
    with pytest.raises(ValueError, match=r"`boxes` must be \[B, R, 4\]"):
        roi_align(FEATURES, BOXES[..., :3], 2, 0.25)
    with pytest.raises(ValueError, match=r"`features` must be \[B, H, W, C\]"):
        roi_align(FEATURES[0], BOXES, 2, 0.25)
    pyramid = [np.zeros((2, 8, 8, 3), "float32"), np.zeros((2, 4, 4, 4), "float32")]
    with pytest.raises(ValueError, match="same channels"):
        multilevel_roi_align(pyramid, BOXES, 2)
    with pytest.raises(ValueError, match=r"`features` holds 2 images but `boxes` holds boxes for 1"):
        multilevel_roi_align([np.zeros((2, 8, 8, 3), "float32")], BOXES[:1], 2)
    with pytest.raises(ValueError, match="same batch size"):
        multilevel_roi_align([np.zeros((2, 8, 8, 3), "float32"), np.zeros((1, 4, 4, 3), "float32")], BOXES, 2)
    with pytest.raises(ValueError, match="list of"):
        multilevel_roi_align(FEATURES, BOXES, 2)


@pytest.mark.tensorflow_only
def test_unknown_batch_size_in_a_graph():
    import tensorflow as tf

    signature = [tf.TensorSpec([None, 7, 9, 3], tf.float32), tf.TensorSpec([None, 3, 4], tf.float32)]
    fn = tf.function(lambda f, b: roi_align(f, b, 2, 0.25), input_signature=signature)
    np.testing.assert_allclose(fn(FEATURES, BOXES).numpy(), _np(roi_align(FEATURES, BOXES, 2, 0.25)), atol=1e-6)


def test_bilinear_sample_gradient_in_the_points():
    """d/dy, d/dx of the interpolation: the slope between neighbours (central differences of the
    NumPy reference), 0 where a point is clamped."""
    fmap = FEATURES[:1]
    y = np.array([[0.3, 2.6, 5.2, -0.5, 6.4]], "float32")
    x = np.array([[1.7, 4.2, 0.4, 3.3, 8.5]], "float32")
    upstream = np.random.default_rng(6).normal(size=(1, 5, 3)).astype("float32")
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        yt, xt = tf.constant(y), tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch([yt, xt])
            loss = tf.reduce_sum(bilinear_sample(fmap, yt, xt) * upstream)
        d_y, d_x = [g.numpy() for g in tape.gradient(loss, [yt, xt])]
    else:
        import jax

        loss = lambda yy, xx: jax.numpy.sum(bilinear_sample(fmap, yy, xx) * upstream)  # noqa: E731
        d_y, d_x = [np.asarray(g) for g in jax.grad(loss, argnums=(0, 1))(y, x)]
    step = 1e-3
    for k in range(5):
        for grad, dy, dx in ((d_y, step, 0.0), (d_x, 0.0, step)):
            plus = _ref_bilinear(fmap[0].astype("float64"), y[0, k] + dy, x[0, k] + dx)
            minus = _ref_bilinear(fmap[0].astype("float64"), y[0, k] - dy, x[0, k] - dx)
            numeric = np.sum((plus - minus) / (2 * step) * upstream[0, k])
            np.testing.assert_allclose(grad[0, k], numeric, atol=1e-3, err_msg=f"point {k}")
