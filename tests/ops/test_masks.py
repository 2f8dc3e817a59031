"""Tests for keras_cvx.ops.masks: ``crop_mask_targets`` against a NumPy loop of Detectron2's
aligned RoIAlign sampling (per-sample bilinear with its border rule, mean per bin, >= 0.5),
including an average of exactly 0.5 and boxes at and beyond the border; ``paste_masks``
against a NumPy per-pixel loop of ``grid_sample`` (align_corners=False, zero padding) on the
box, with fractional boxes, boxes partly outside the image and degenerate boxes; both eager
and compiled (XLA under TensorFlow, jax.jit under JAX)."""

import functools

import numpy as np
import pytest
from keras import ops

from keras_cvx.ops.masks import crop_mask_targets, paste_masks
from tests.ops.compiled import run_compiled
from tests.ops.test_roi_align import _ref_bilinear


def numpy_crop_averages(masks, boxes, stride, size, grid):
    """Un-thresholded bin averages ``[P, size, size]`` (float64)."""
    out = np.zeros((len(masks), size, size))
    for p, (mask, box) in enumerate(zip(np.asarray(masks, np.float64), np.asarray(boxes, np.float64))):
        x0, y0, x1, y1 = box / stride - 0.5
        bin_w, bin_h = (x1 - x0) / size, (y1 - y0) / size
        for i in range(size):
            for j in range(size):
                total = 0.0
                for iy in range(grid):
                    for ix in range(grid):
                        y = y0 + i * bin_h + (iy + 0.5) * bin_h / grid
                        x = x0 + j * bin_w + (ix + 0.5) * bin_w / grid
                        total += _ref_bilinear(mask[..., None], y, x)[0]
                out[p, i, j] = total / grid**2
    return out


def numpy_paste(masks, boxes, height, width):
    """Per pixel: ``grid_sample`` (align_corners=False, zeros padding) of the box-normalised
    pixel centre, box sides below 1 pixel widened to 1 (the documented degenerate-box rule)."""
    masks, boxes = np.asarray(masks, np.float64), np.asarray(boxes, np.float64)
    b, d, m, _ = masks.shape
    out = np.zeros((b, d, height, width))
    for n in range(b):
        for k in range(d):
            x0, y0, x1, y1 = boxes[n, k]
            bw, bh = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
            for y in range(height):
                for x in range(width):
                    gx = (x + 0.5 - x0) / bw * 2 - 1  # the normalised grid of _do_paste_mask
                    gy = (y + 0.5 - y0) / bh * 2 - 1
                    u = ((gx + 1) * m - 1) / 2  # grid_sample's unnormalisation, align_corners=False
                    v = ((gy + 1) * m - 1) / 2
                    j0, i0 = int(np.floor(u)), int(np.floor(v))
                    fu, fv = u - j0, v - i0
                    value = 0.0
                    for i, wy in ((i0, 1 - fv), (i0 + 1, fv)):
                        for j, wx in ((j0, 1 - fu), (j0 + 1, fu)):
                            if 0 <= i < m and 0 <= j < m:
                                value += wy * wx * masks[n, k, i, j]
                    out[n, k, y, x] = value
    return out


def _check_targets(actual, averages, decided_fraction=0.99):
    actual = np.asarray(actual)
    assert set(np.unique(actual)) <= {0.0, 1.0}
    decided = np.abs(averages - 0.5) > 1e-5  # float32 vs float64 rounding can only flip near-ties
    assert decided.mean() > decided_fraction
    np.testing.assert_array_equal(actual[decided], (averages >= 0.5)[decided].astype(np.float32))


def test_crop_exact_half_is_foreground_and_uint8_masks():
    masks = np.zeros((1, 4, 4), "uint8")
    masks[0, :, 0] = 1
    masks[0, 2:, 2:] = 1
    # stride 1, 2 x 2 bins of 2 x 2 samples at integer pixels 0..3: column 0 alone averages 0.5
    targets = np.asarray(ops.convert_to_numpy(crop_mask_targets(masks, np.array([[0, 0, 4, 4]], "float32"),
                                                                mask_stride=1, output_size=2)))
    assert targets.dtype == np.float32
    np.testing.assert_array_equal(targets[0], [[1, 0], [1, 1]])
    expected = numpy_crop_averages(masks, [[0, 0, 4, 4]], 1, 2, 2)
    np.testing.assert_array_equal(expected[0], [[0.5, 0.0], [0.5, 1.0]])


def test_crop_matches_numpy_roi_align_eager_and_compiled():
    rng = np.random.default_rng(0)
    points, h, w, stride, size = 6, 10, 12, 4, 7
    masks = rng.random((points, h, w)).astype("float32")  # soft masks: no exact ties at 0.5
    boxes = np.array([
        [0, 0, 48, 40],  # the whole image
        [3.3, 5.7, 21.9, 30.2],  # fractional interior
        [30.0, 20.0, 60.0, 52.0],  # beyond the right and bottom border
        [-10.5, -6.0, 12.0, 9.0],  # beyond the left and top border
        [40.0, 0.0, 48.0, 4.0],  # a corner
        [20.0, 20.0, 21.0, 21.5],  # smaller than one mask pixel
    ], "float32")
    averages = numpy_crop_averages(masks, boxes, stride, size, 2)
    eager = crop_mask_targets(masks, boxes, mask_stride=stride, output_size=size)
    assert tuple(eager.shape) == (points, size, size)
    _check_targets(ops.convert_to_numpy(eager), averages)
    compiled = run_compiled(functools.partial(crop_mask_targets, mask_stride=stride, output_size=size), masks, boxes)
    _check_targets(compiled, averages)
    averages3 = numpy_crop_averages(masks, boxes, stride, size, 3)
    _check_targets(ops.convert_to_numpy(crop_mask_targets(masks, boxes, stride, size, sampling_ratio=3)), averages3)
    # binary uint8 masks (rational sample positions make some bins tie at 0.5 up to rounding)
    binary = (masks < 0.5).astype("uint8")
    _check_targets(ops.convert_to_numpy(crop_mask_targets(binary, boxes, stride, size)),
                   numpy_crop_averages(binary, boxes, stride, size, 2), decided_fraction=0.95)


def test_crop_argument_errors():
    masks, boxes = np.zeros((2, 4, 4), "float32"), np.zeros((2, 4), "float32")
    with pytest.raises(ValueError, match="mask_stride"):
        crop_mask_targets(masks, boxes, mask_stride=0)
    with pytest.raises(ValueError, match="output_size"):
        crop_mask_targets(masks, boxes, output_size=-1)
    with pytest.raises(ValueError, match="sampling_ratio"):
        crop_mask_targets(masks, boxes, sampling_ratio=0)
    with pytest.raises(ValueError, match="masks"):
        crop_mask_targets(masks[0], boxes)
    with pytest.raises(ValueError, match="boxes"):
        crop_mask_targets(masks, boxes[:, :3])
    with pytest.raises(ValueError, match="P"):
        crop_mask_targets(masks, boxes[:1])


def test_paste_matches_numpy_grid_sample_eager_and_compiled():
    rng = np.random.default_rng(1)
    height, width, m = 13, 17, 5
    masks = rng.random((2, 4, m, m)).astype("float32")
    boxes = np.array([
        [[2.3, 1.6, 11.8, 9.1], [-4.5, -3.0, 6.2, 5.5], [10.0, 8.0, 25.0, 20.0], [0.0, 0.0, 17.0, 13.0]],
        [[5.5, 6.25, 9.75, 12.0], [7.0, 7.0, 7.0, 9.0], [8.0, 3.0, 6.0, 2.0], [3.0, 4.0, 3.4, 4.2]],
    ], "float32")  # fractional, partly outside, whole image; zero-width, inverted, sub-pixel
    expected = numpy_paste(masks, boxes, height, width)
    eager = np.asarray(ops.convert_to_numpy(paste_masks(masks, boxes, (height, width))))
    assert eager.shape == (2, 4, height, width) and eager.dtype == np.float32
    assert np.all(np.isfinite(eager))
    np.testing.assert_allclose(eager, expected, rtol=1e-5, atol=1e-5)
    compiled = run_compiled(functools.partial(paste_masks, image_size=(height, width)), masks, boxes)
    np.testing.assert_allclose(compiled, expected, rtol=1e-5, atol=1e-5)
    # zero outside the box's bilinear footprint, and a box covering the image exactly
    assert np.all(eager[0, 0, 11:, :] == 0) and np.all(eager[0, 0, :, 14:] == 0)
    assert eager[0, 3].max() <= 1.0 and eager[0, 3].min() > 0


def test_paste_non_finite_box_gives_zeros_and_argument_errors():
    masks = np.ones((1, 2, 3, 3), "float32")
    boxes = np.array([[[1.0, 1.0, np.nan, 4.0], [0.0, 0.0, 4.0, np.inf]]], "float32")
    out = np.asarray(ops.convert_to_numpy(paste_masks(masks, boxes, (5, 5))))
    np.testing.assert_array_equal(out, np.zeros((1, 2, 5, 5)))
    with pytest.raises(ValueError, match="image_size"):
        paste_masks(masks, boxes, 5)
    with pytest.raises(ValueError, match="image_size"):
        paste_masks(masks, boxes, (5, 0))
    with pytest.raises(ValueError, match="mask_probabilities"):
        paste_masks(masks[0], boxes, (5, 5))
    with pytest.raises(ValueError, match="boxes"):
        paste_masks(masks, boxes[0], (5, 5))
