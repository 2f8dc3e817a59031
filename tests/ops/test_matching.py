import functools

import numpy as np
import pytest
from keras import ops

from keras_cvx.ops.anchors import fcos_locations
from keras_cvx.ops.matching import argmax_iou_match, fcos_match, gather_matches, ssd_match
from tests.ops.compiled import run_compiled


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _iou(a, b):
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - iw * ih
            out[i, j] = iw * ih / union if union > 0 else 0.0
    return out


def _ref_argmax(gt, labels, anchors, pos, neg, low_quality, min_iou=0.0):
    valid = np.flatnonzero(labels >= 0)
    matched, state = np.full(len(anchors), -1), np.zeros(len(anchors), int)
    if len(valid) == 0:
        return matched, state
    iou = _iou(gt[valid], anchors)
    best = iou.max(0)
    arg = valid[iou.argmax(0)]
    state = np.where(best >= pos, 1, np.where(best < neg, 0, -1))
    if low_quality:
        for row in iou:
            if row.max() > 0 and row.max() >= min_iou:
                state[row == row.max()] = 1
    return np.where(state == 1, arg, -1), state


def _ref_ssd(gt, labels, priors, thr):
    valid = np.flatnonzero(labels >= 0)
    if len(valid) == 0:
        return np.full(len(priors), -1), np.zeros(len(priors), int)
    iou = _iou(gt[valid], priors)
    best_gt_overlap, best_gt = iou.max(0), iou.argmax(0)
    for j, p in enumerate(iou.argmax(1)):  # ssd.pytorch's loop: later ground truths win
        best_gt_overlap[p] = 2.0
        best_gt[p] = j
    state = (best_gt_overlap >= thr).astype(int)
    return np.where(state == 1, valid[best_gt], -1), state


def _problem(seed, batch=3, m=5, n=40):
    rng = np.random.default_rng(seed)
    def boxes(k, lo, hi):
        xy = rng.uniform(0, 60, (k, 2))
        return np.concatenate([xy, xy + rng.uniform(lo, hi, (k, 2))], -1).astype("float32")
    gt = np.stack([boxes(m, 8, 40) for _ in range(batch)])
    labels = rng.integers(0, 4, (batch, m)).astype("int32")
    labels[0, 3:] = -1  # padding
    labels[1, :] = -1  # an image without objects
    gt[0, 3:] = gt[2, :2]  # padding rows that would overlap anchors if they were matched
    return gt, labels, boxes(n, 5, 30)


def test_argmax_matcher_against_reference():
    gt, labels, anchors = _problem(0)
    fn = functools.partial(argmax_iou_match, positive_threshold=0.5, negative_threshold=0.3, low_quality_min_iou=0.1)
    matched, state = run_compiled(fn, gt, labels, anchors)
    for b in range(3):
        exp_m, exp_s = _ref_argmax(gt[b], labels[b], anchors, 0.5, 0.3, True, 0.1)
        np.testing.assert_array_equal(state[b], exp_s)
        np.testing.assert_array_equal(matched[b], exp_m)
    assert np.all(state[1] == 0) and np.all(matched[1] == -1)
    assert not np.isin(matched[0], [3, 4]).any()  # padding never matched
    no_low = _np(argmax_iou_match(gt, labels, anchors, 0.5, 0.3, allow_low_quality_matches=False)[1])
    for b in range(3):
        np.testing.assert_array_equal(no_low[b], _ref_argmax(gt[b], labels[b], anchors, 0.5, 0.3, False)[1])


def test_argmax_hand_computed_and_unbatched():
    gt = np.array([[0, 0, 10, 10]], "float32")
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 8], [50, 50, 60, 60]], "float32")
    # IoUs 1.0, 0.5, 0.8, 0 -> thresholds (0.7, 0.3): pos, ignore, pos, neg
    matched, state = argmax_iou_match(gt, np.array([2]), anchors)
    np.testing.assert_array_equal(_np(state), [1, -1, 1, 0])
    np.testing.assert_array_equal(_np(matched), [0, -1, 0, -1])
    _, state = argmax_iou_match(gt, np.array([2]), anchors[1:], positive_threshold=0.9)
    np.testing.assert_array_equal(_np(state), [-1, 1, 0])  # 0.8 is the gt's best: low-quality positive
    with pytest.raises(ValueError, match="negative_threshold"):
        argmax_iou_match(gt, np.array([2]), anchors, 0.3, 0.7)


def test_rpn_thresholds_exactly_at_0_7_and_0_3():
    """Faster R-CNN's RPN rule (Ren et al. 2015, Sec. 3.1.2): IoU >= 0.7 is positive, < 0.3
    negative, in between ignored. IoUs here are exact in float32 (70/100, 30/100, 29/100)."""
    gt = np.array([[0, 0, 10, 10]], "float32")
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 7], [0, 0, 10, 6.9], [0, 0, 10, 3], [0, 0, 10, 2.9]], "float32")
    np.testing.assert_allclose(_iou(gt, anchors)[0], [1.0, 0.7, 0.69, 0.3, 0.29], rtol=1e-6)
    for low_quality in (True, False):  # the 1.0 anchor is the best one: low-quality matching adds nothing
        matched, state = argmax_iou_match(gt, np.array([0]), anchors, allow_low_quality_matches=low_quality)
        np.testing.assert_array_equal(_np(state), [1, 1, -1, -1, 0])
        np.testing.assert_array_equal(_np(matched), [0, 0, -1, -1, -1])


def test_ssd_match_against_reference():
    gt, labels, priors = _problem(1, n=60)
    matched, state = run_compiled(functools.partial(ssd_match, iou_threshold=0.5), gt, labels, priors)
    for b in range(3):
        exp_m, exp_s = _ref_ssd(gt[b], labels[b], priors, 0.5)
        np.testing.assert_array_equal(state[b], exp_s)
        np.testing.assert_array_equal(matched[b], exp_m)
    # every valid ground truth owns at least one prior (the forced best prior)
    assert set(matched[0][matched[0] >= 0]) == {0, 1, 2}


def test_ssd_forced_prior_overrides_threshold():
    gt = np.array([[0, 0, 4, 4], [100, 100, 140, 140]], "float32")
    priors = np.array([[0, 0, 20, 20], [100, 100, 140, 141], [90, 90, 150, 150]], "float32")
    matched, state = ssd_match(gt, np.array([1, 5]), priors)
    # IoUs with their best ground truth: 16/400 = 0.04 (forced: gt 0's best prior), 0.976, 1600/3600 < 0.5
    np.testing.assert_array_equal(_np(state), [1, 1, 0])
    np.testing.assert_array_equal(_np(matched), [0, 1, -1])


def _ref_fcos(gt, labels, points, levels, strides, bounds, radius):
    out_m, out_s = np.full(len(points), -1), np.zeros(len(points), int)
    for n, ((x, y), lev) in enumerate(zip(points, levels)):
        best = None
        for m in np.flatnonzero(labels >= 0):
            x0, y0, x1, y1 = gt[m]
            cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, radius * strides[lev]
            sx0, sy0, sx1, sy1 = max(cx - r, x0), max(cy - r, y0), min(cx + r, x1), min(cy + r, y1)
            if min(x - sx0, y - sy0, sx1 - x, sy1 - y) <= 0:
                continue
            if not bounds[lev] <= max(x - x0, y - y0, x1 - x, y1 - y) <= bounds[lev + 1]:
                continue
            area = (x1 - x0) * (y1 - y0)
            if best is None or area < best[0]:
                best = (area, m)
        if best is not None:
            out_m[n], out_s[n] = best[1], 1
    return out_m, out_s


def test_fcos_match_against_reference():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 100, (2, 6, 2))
    gt = np.concatenate([xy, xy + rng.uniform(10, 120, (2, 6, 2))], -1).astype("float32")
    labels = np.array([[0, 1, 2, 3, -1, -1], [4, 4, 4, 4, 4, 4]], "int32")
    strides, sizes = (8, 16, 32), (16, 48)
    points, levels = fcos_locations(128, strides)
    fn = functools.partial(fcos_match, strides=strides, sizes_of_interest=sizes)
    matched, state = run_compiled(fn, gt, labels, _np(points), _np(levels))
    bounds = [-1, 16, 48, 1e8]
    for b in range(2):
        exp_m, exp_s = _ref_fcos(gt[b], labels[b], _np(points), _np(levels), strides, bounds, 1.5)
        np.testing.assert_array_equal(state[b], exp_s)
        np.testing.assert_array_equal(matched[b], exp_m)
    assert state.sum() > 10


def test_fcos_centres_and_no_radius():
    gt = np.array([[0, 0, 64, 64]], "float32")
    points = np.array([[8, 8], [32, 32], [56, 56]], "float32")
    levels = np.zeros(3, "int32")
    kw = dict(strides=(8, 16), sizes_of_interest=(1000,))
    _, state = fcos_match(gt, [0], points, levels, **kw)
    np.testing.assert_array_equal(_np(state), [0, 1, 0])  # only within 1.5 * 8 of the centre
    _, state = fcos_match(gt, [0], points, levels, gt_centers=np.array([[10.0, 10.0]]), **kw)
    np.testing.assert_array_equal(_np(state), [1, 0, 0])  # mass centre moved to (10, 10)
    _, state = fcos_match(gt, [0], points, levels, radius=None, **kw)
    np.testing.assert_array_equal(_np(state), [1, 1, 1])


def test_gather_matches():
    values = np.array([[[1, 1, 2, 2], [3, 3, 4, 4]]], "float32")
    out = _np(gather_matches(values, np.array([[1, -1, 0]]), fill_value=0))
    np.testing.assert_array_equal(out, [[[3, 3, 4, 4], [0, 0, 0, 0], [1, 1, 2, 2]]])
    labels = _np(gather_matches(np.array([7, 9]), np.array([1, -1]), fill_value=-1))
    np.testing.assert_array_equal(labels, [9, -1])


@pytest.mark.tensorflow_only
def test_gather_matches_with_unknown_batch_size():
    import tensorflow as tf

    values = np.arange(24, dtype="float32").reshape(2, 3, 4)
    matched = np.array([[2, -1, 0, 1], [-1, -1, 1, 0]], "int32")
    signature = [tf.TensorSpec([None, 3, 4], tf.float32), tf.TensorSpec([None, 4], tf.int32)]
    gather = tf.function(lambda v, m: gather_matches(v, m, fill_value=-5.0), input_signature=signature)
    expected = np.where((matched >= 0)[..., None], np.take_along_axis(values, np.maximum(matched, 0)[..., None], 1), -5.0)
    np.testing.assert_array_equal(gather(values, matched).numpy(), expected)
