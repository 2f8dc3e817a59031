import functools
import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.ops.deformable_roi_pool import deformable_roi_pool, mmdet_roi_level, multilevel_deformable_roi_pool
from tests.ops.compiled import run_compiled


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _c_round(v):
    """C's round(): half away from zero."""
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def _geometry(box, scale, k):
    x1, y1, x2, y2 = [_c_round(float(c)) for c in box]
    start_x, start_y = x1 * scale - 0.5, y1 * scale - 0.5
    roi_w = max((x2 + 1) * scale - 0.5 - start_x, 0.1)
    roi_h = max((y2 + 1) * scale - 0.5 - start_y, 0.1)
    return start_x, start_y, roi_w, roi_h


def _samples(box, offsets, scale, k, n, gamma):
    """Sample points of mmdet v1's DeformablePSROIPoolForwardKernel (group size 1): per bin, the
    list of (y, x) for every sample, in the order of the kernel's loops."""
    start_x, start_y, roi_w, roi_h = _geometry(box, scale, k)
    bin_w, bin_h = roi_w / k, roi_h / k
    points = {}
    for ph in range(k):
        for pw in range(k):
            tx, ty = gamma * offsets[ph, pw, 0], gamma * offsets[ph, pw, 1]
            wstart = pw * bin_w + start_x + tx * roi_w
            hstart = ph * bin_h + start_y + ty * roi_h
            points[ph, pw] = [(hstart + ih * bin_h / n, wstart + iw * bin_w / n) for ih in range(n) for iw in range(n)]
    return points


def _ref_pool(fmap, box, offsets, scale, k, n=4, gamma=0.1):
    """NumPy loop of the mmdet v1 kernel: skip samples outside [-0.5, size - 0.5], clamp, floor/ceil
    bilinear, average over the samples kept."""
    h, w, c = fmap.shape
    out = np.zeros((k, k, c))
    for (ph, pw), points in _samples(box, offsets, scale, k, n, gamma).items():
        total, count = np.zeros(c), 0
        for y, x in points:
            if x < -0.5 or x > w - 0.5 or y < -0.5 or y > h - 0.5:
                continue
            x, y = min(max(x, 0.0), w - 1.0), min(max(y, 0.0), h - 1.0)
            x1, x2, y1, y2 = math.floor(x), math.ceil(x), math.floor(y), math.ceil(y)
            dx, dy = x - x1, y - y1
            total = total + ((1 - dx) * (1 - dy) * fmap[y1, x1] + (1 - dx) * dy * fmap[y2, x1]
                             + dx * (1 - dy) * fmap[y1, x2] + dx * dy * fmap[y2, x2])
            count += 1
        out[ph, pw] = total / count if count else 0.0
    return out


def _ref_pool_transpose(shape, box, offsets, upstream, scale, k, n=4, gamma=0.1):
    """d sum(out * upstream) / d fmap of one box: the kernel's backward, a NumPy scatter-add."""
    h, w = shape[:2]
    grad = np.zeros(shape)
    for (ph, pw), points in _samples(box, offsets, scale, k, n, gamma).items():
        kept = [(y, x) for y, x in points if -0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5]
        for y, x in kept:
            x, y = min(max(x, 0.0), w - 1.0), min(max(y, 0.0), h - 1.0)
            x1, x2, y1, y2 = math.floor(x), math.ceil(x), math.floor(y), math.ceil(y)
            dx, dy = x - x1, y - y1
            g = upstream[ph, pw] / len(kept)
            grad[y1, x1] += (1 - dx) * (1 - dy) * g
            grad[y2, x1] += (1 - dx) * dy * g
            grad[y1, x2] += dx * (1 - dy) * g
            grad[y2, x2] += dx * dy * g
    return grad


FEATURES = np.random.default_rng(0).normal(size=(2, 9, 11, 3)).astype("float32")
# inside; crossing the top-left border; crossing the bottom-right border; corners at .5
# (rounded away from zero); fully outside; the whole map
BOXES = np.array(
    [[[4, 4, 30, 20], [-10, -6, 12, 14], [30, 20, 50, 40]],
     [[10.5, 6.5, 11.4, 7.0], [-40, -40, -20, -20], [-0.5, 0, 43, 35]]], "float32")
OFFSETS = (2.0 * np.random.default_rng(1).normal(size=(2, 3, 3, 3, 2))).astype("float32")


@pytest.mark.parametrize("per_bin, samples", [(True, 4), (False, 2)])
def test_matches_numpy_kernel_loop(per_bin, samples):
    offsets = OFFSETS if per_bin else OFFSETS[:, :, 0, 0]
    fn = functools.partial(deformable_roi_pool, output_size=3, spatial_scale=0.25, sampling_ratio=samples, gamma=0.1)
    out = run_compiled(fn, FEATURES, BOXES, offsets)
    assert out.shape == (2, 3, 3, 3, 3)
    np.testing.assert_allclose(_np(fn(FEATURES, BOXES, offsets)), out, atol=1e-5)
    for b in range(2):
        for r in range(3):
            bins = OFFSETS[b, r] if per_bin else np.broadcast_to(OFFSETS[b, r, 0, 0], (3, 3, 2))
            expected = _ref_pool(FEATURES[b], BOXES[b, r], bins, 0.25, 3, n=samples)
            np.testing.assert_allclose(out[b, r], expected, atol=1e-5, err_msg=f"box {b},{r}")
    assert np.all(out[1, 1] == 0.0)  # fully outside: no sample kept


def test_zero_offsets_are_the_plain_pooling_of_this_geometry():
    zeros = np.zeros((2, 3, 2, 2, 2), "float32")
    pool = functools.partial(deformable_roi_pool, output_size=2, spatial_scale=0.25, sampling_ratio=3)
    out, without = run_compiled(lambda f, b, o: (pool(f, b, o), pool(f, b, None)), FEATURES, BOXES, zeros)
    np.testing.assert_allclose(without, out)
    for b in range(2):
        for r in range(3):
            expected = _ref_pool(FEATURES[b], BOXES[b, r], np.zeros((2, 2, 2)), 0.25, 2, n=3)
            np.testing.assert_allclose(out[b, r], expected, atol=1e-5)


def test_an_offset_moves_every_sample_of_its_bin_by_gamma_offset_roi_size():
    """On a linear map F = a x + b y + c (bilinear interpolation is exact there) a bin's value is F at
    the mean of its samples, so moving every sample by (gamma dx roi_w, gamma dy roi_h) feature pixels
    adds a gamma dx roi_w + b gamma dy roi_h; bins without an offset do not change."""
    a, b, c = 0.7, -1.3, 2.0
    ys, xs = np.mgrid[0:40, 0:48].astype("float32")
    ramp = (a * xs + b * ys + c)[None, :, :, None]
    box = np.array([[[40, 48, 100, 120]]], "float32")  # stride 4: samples well inside the 40 x 48 map
    offsets = np.zeros((1, 1, 7, 7, 2), "float32")
    offsets[0, 0, 2, 5] = (0.8, -0.6)
    offsets[0, 0, 6, 0] = (-1.5, 0.4)
    pool = functools.partial(deformable_roi_pool, output_size=7, spatial_scale=0.25)
    still, moved, doubled = run_compiled(
        lambda f, b, o: (pool(f, b, None), pool(f, b, o), pool(f, b, o / 2, gamma=0.2)), ramp, box, offsets)
    still, moved, doubled = still[0, 0, ..., 0], moved[0, 0, ..., 0], doubled[0, 0, ..., 0]
    _, _, roi_w, roi_h = _geometry(box[0, 0], 0.25, 7)  # 15.25 and 18.25 feature pixels
    expected = still + a * 0.1 * offsets[0, 0, ..., 0] * roi_w + b * 0.1 * offsets[0, 0, ..., 1] * roi_h
    np.testing.assert_allclose(moved, expected, atol=1e-4)
    assert abs(moved[2, 5] - still[2, 5]) > 1.0
    # gamma scales the move: gamma 0.2 with offsets / 2 is the same pooling
    np.testing.assert_allclose(doubled, moved, atol=1e-4)


def _gradients(fn, features, offsets, upstream, *args):
    """(d/d features, d/d offsets) of sum(fn(features, offsets, *args) * upstream), compiled."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        def grad(f, o, u, *a):
            with tf.GradientTape() as tape:
                tape.watch([f, o])
                loss = tf.reduce_sum(fn(f, o, *a) * u)
            return tape.gradient(loss, [f, o])

        return [np.asarray(g) for g in tf.function(grad, jit_compile=True)(features, offsets, upstream, *args)]
    import jax

    loss = lambda f, o, u, *a: jax.numpy.sum(fn(f, o, *a) * u)  # noqa: E731
    return [np.asarray(g) for g in jax.jit(jax.grad(loss, argnums=(0, 1)))(features, offsets, upstream, *args)]


def test_gradients_features_scatter_add_and_offsets_finite_differences():
    upstream = np.random.default_rng(2).normal(size=(2, 3, 3, 3, 3)).astype("float32")

    def fn(f, o, b):  # 2 x 2 samples per bin: the same code as 4 x 4, a quarter of the compile time
        return deformable_roi_pool(f, b, o, 3, 0.25, sampling_ratio=2)

    d_features, d_offsets = _gradients(fn, FEATURES, OFFSETS, upstream, BOXES)
    expected = np.zeros(FEATURES.shape)
    for b in range(2):
        for r in range(3):
            expected[b] += _ref_pool_transpose(FEATURES.shape[1:], BOXES[b, r], OFFSETS[b, r], upstream[b, r], 0.25, 3,
                                               n=2)
    np.testing.assert_allclose(d_features, expected, atol=1e-5)
    assert np.all(d_offsets[1, 1] == 0.0)  # nothing sampled
    features64 = FEATURES.astype("float64")
    for index in [(0, 0, 1, 1, 0), (0, 0, 2, 0, 1), (0, 2, 0, 0, 0), (1, 2, 1, 2, 1), (0, 1, 2, 2, 0)]:
        b, r, ph, pw, axis = index
        step = 1e-3

        def value(delta):
            bins = OFFSETS[b, r].astype("float64").copy()
            bins[ph, pw, axis] += delta
            return np.sum(_ref_pool(features64[b], BOXES[b, r], bins, 0.25, 3, n=2) * upstream[b, r])

        numeric = (value(step) - value(-step)) / (2 * step)
        np.testing.assert_allclose(d_offsets[index], numeric, atol=2e-3, rtol=1e-3, err_msg=str(index))


def test_mmdet_roi_level_formula():
    sides = np.array([10, 110, 111, 222, 223, 446, 447, 1000], "float32")  # "+1" sizes 11 .. 1001
    boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], -1)
    expected = [min(3, max(0, math.floor(math.log2((s + 1) / 56 + 1e-6)))) + 2 for s in sides]
    np.testing.assert_array_equal(_np(mmdet_roi_level(boxes)), expected)
    assert expected == [2, 2, 3, 3, 4, 4, 5, 5]


def test_multilevel_pools_each_box_from_its_mmdet_level():
    rng = np.random.default_rng(3)
    pyramid = [rng.normal(size=(2, 256 // 2**k, 256 // 2**k, 2)).astype("float32") for k in range(2, 6)]
    boxes = np.array([[[0, 0, 40, 40], [5, 5, 150, 130], [10, 10, 250, 250]],
                      [[20, 30, 80, 60], [0, 0, 470, 460], [40, 8, 50, 20]]], "float32")
    offsets = rng.normal(size=(2, 3, 2, 2, 2)).astype("float32")
    fn = functools.partial(multilevel_deformable_roi_pool, output_size=2, sampling_ratio=2)
    out = run_compiled(lambda *a: fn(list(a[:4]), a[4], a[5]), *pyramid, boxes, offsets)
    levels = _np(mmdet_roi_level(boxes))
    assert sorted(set(levels.ravel())) == [2, 3, 4, 5]
    for b in range(2):
        for r in range(3):
            k = levels[b, r]
            expected = _ref_pool(pyramid[k - 2][b], boxes[b, r], offsets[b, r], 2.0**-k, 2, n=2)
            np.testing.assert_allclose(out[b, r], expected, atol=1e-5, err_msg=f"box {b},{r}")
    given = np.full((2, 3), 3, "int32")
    out = _np(multilevel_deformable_roi_pool(pyramid, boxes, None, 2, sampling_ratio=2, levels=given))
    np.testing.assert_allclose(out[1, 1], _ref_pool(pyramid[1][1], boxes[1, 1], np.zeros((2, 2, 2)), 1 / 8, 2, n=2),
                               atol=1e-5)


def test_float16_features_and_validation():
    half = deformable_roi_pool(FEATURES.astype("float16"), BOXES, OFFSETS, 3, 0.25)
    assert ops.dtype(half) == "float16"
    np.testing.assert_allclose(_np(half).astype("float32"), _np(deformable_roi_pool(FEATURES, BOXES, OFFSETS, 3, 0.25)),
                               atol=2e-2)
    with pytest.raises(ValueError, match=r"`offsets` must be \[B, R, 3, 3, 2\]"):
        deformable_roi_pool(FEATURES, BOXES, OFFSETS[..., :2, :], 3, 0.25)
    with pytest.raises(ValueError, match="`offsets` holds 2 RoIs but `boxes` holds 3"):
        deformable_roi_pool(FEATURES, BOXES, OFFSETS[:, :2], 3, 0.25)
    with pytest.raises(ValueError, match="`features` holds 1 images but `boxes` holds boxes for 2"):
        deformable_roi_pool(FEATURES[:1], BOXES, None, 3, 0.25)
    with pytest.raises(ValueError, match="sampling_ratio"):
        deformable_roi_pool(FEATURES, BOXES, None, 3, 0.25, sampling_ratio=0)
    with pytest.raises(ValueError, match="same channels"):
        multilevel_deformable_roi_pool([FEATURES, FEATURES[..., :2]], BOXES)
