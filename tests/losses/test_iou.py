"""Tests for keras_cvx.losses.iou: GIoU / IoU losses of (l, t, r, b) boxes against NumPy with
AdelaiDet's +1 smoothing, against ``ops.boxes.pairwise_giou`` without it, centre-ness weighting,
degenerate boxes and the shared loss harness."""

import numpy as np
import pytest
from keras import ops

from keras_cvx.losses.iou import IoULoss, ltrb_iou_loss
from keras_cvx.ops.boxes import pairwise_giou
from tests.test_case import run_loss_test


def numpy_loss(target, pred, loss_type="giou", smooth=1.0):
    target, pred = np.asarray(target, np.float64), np.asarray(pred, np.float64)
    out = []
    for (tl, tt, tr, tb), (pl, pt, pr, pb) in zip(target.reshape(-1, 4), pred.reshape(-1, 4)):
        inter = (min(pl, tl) + min(pr, tr)) * (min(pt, tt) + min(pb, tb))
        union = (pl + pr) * (pt + pb) + (tl + tr) * (tt + tb) - inter
        iou = (inter + smooth) / (union + smooth)
        enclosing = (max(pl, tl) + max(pr, tr)) * (max(pt, tt) + max(pb, tb)) + 1e-7
        out.append({"giou": 1 - (iou - (enclosing - union) / enclosing), "iou": -np.log(iou),
                    "linear_iou": 1 - iou}[loss_type])
    return np.array(out).reshape(target.shape[:-1])


@pytest.mark.parametrize("loss_type", ["giou", "iou", "linear_iou"])
def test_matches_numpy_and_harness(loss_type):
    rng = np.random.default_rng(0)
    target = rng.uniform(0.2, 6, (5, 4)).astype("float32")
    pred = rng.uniform(0.0, 6, (5, 4)).astype("float32")
    weight = rng.uniform(0, 1, 5).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(ltrb_iou_loss(target, pred, loss_type)),
                               numpy_loss(target, pred, loss_type), rtol=1e-5)
    run_loss_test(IoULoss, {"loss_type": loss_type}, target, pred,
                  expected_value=numpy_loss(target, pred, loss_type).sum(), tolerance=1e-4)
    # FCOS weighs each location by its center-ness target
    np.testing.assert_allclose(float(IoULoss(loss_type)(target, pred, sample_weight=weight)),
                               (numpy_loss(target, pred, loss_type) * weight).sum(), rtol=1e-5)


def test_giou_without_smoothing_is_pairwise_giou_and_defaults():
    loss = IoULoss()
    assert (loss.loss_type, loss.smooth, loss.reduction) == ("giou", 1.0, "sum")
    rng = np.random.default_rng(1)
    target = rng.uniform(1, 9, (6, 4)).astype("float32")
    pred = rng.uniform(0.5, 9, (6, 4)).astype("float32")
    point = rng.uniform(20, 40, (6, 2)).astype("float32")
    to_box = lambda d: np.concatenate([point - d[:, :2], point + d[:, 2:]], -1)  # noqa: E731
    giou = np.diagonal(ops.convert_to_numpy(pairwise_giou(to_box(pred), to_box(target))))
    np.testing.assert_allclose(ops.convert_to_numpy(ltrb_iou_loss(target, pred, "giou", smooth=0.0)), 1 - giou,
                               rtol=1e-4, atol=1e-5)


def test_degenerate_boxes_are_finite():
    zeros = np.zeros((2, 4), "float32")
    values = ops.convert_to_numpy(ltrb_iou_loss(zeros, zeros))
    assert np.all(np.isfinite(values))
    # IoU = (0 + 1) / (0 + 1) = 1 and (C - U) / (C + 1e-7) = 1e-7 / 1e-7: GIoU 0, loss 1 (as AdelaiDet)
    np.testing.assert_allclose(values, [1.0, 1.0], atol=1e-6)
    with pytest.raises(ValueError, match="loss_type"):
        IoULoss(loss_type="diou")
