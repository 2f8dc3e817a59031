import functools
import math

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
