"""Reliability table: bad inputs to losses, ops and layers (run under every backend).

Expected values come from hand computation or NumPy in this file; errors must name the
argument and say what is allowed."""

import math

import keras
import numpy as np
import pytest

from keras_cvx import layers, losses
from keras_cvx.losses.dice import dice_loss
from keras_cvx.ops import (
    class_aware_non_max_suppression,
    decode_boxes,
    multilevel_roi_align,
    non_max_suppression,
    pairwise_iou,
    roi_align,
)
from tests.reliability.cases import Case, Handled, Raises, check_case

FEATURES = np.random.default_rng(0).uniform(size=(2, 8, 8, 4)).astype("float32")
PYRAMID = [np.random.default_rng(k).uniform(size=(2, 64 // 2**k, 64 // 2**k, 4)).astype("float32")
           for k in range(2, 6)]
BOXES = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], "float32")


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _zero_logits(rows, classes):
    return np.zeros((rows, classes), "float32")


def _equals(expected, atol=1e-6):
    def check(value):
        np.testing.assert_allclose(_np(value), expected, rtol=0, atol=atol)

    return check


def _check_nan_roi(value):
    with_nan, clean = value
    assert np.isfinite(with_nan).all()
    np.testing.assert_array_equal(with_nan[0, 0], 0.0)  # the NaN box pools zeros
    np.testing.assert_allclose(with_nan[:, 1:], clean[:, 1:], rtol=0, atol=1e-6)  # the others are unchanged


def _nan_roi():
    boxes = np.array([[[np.nan, 0, 4, 4], [1, 1, 6, 6]], [[0, 0, np.inf, 4], [2, 2, 7, 5]]], "float32")
    clean = np.where(np.isfinite(boxes), boxes, 0.0)
    return _np(roi_align(FEATURES, boxes, 2, 1.0)), _np(roi_align(FEATURES, clean, 2, 1.0))


def _nms_non_finite():
    boxes = BOXES.copy()
    boxes[0, 2] = np.nan
    indices, count = non_max_suppression(boxes, np.array([0.9, np.nan, 0.5], "float32"), 3)
    return _np(indices).tolist(), int(_np(count))


def _built(layer, channels):
    layer(np.zeros((1, 4, 4, channels), "float32"))
    return layer


CASES = [
    # losses: labels are class ids 0..C-1, PADDING_LABEL (-1) and, where there is one, the background C
    Case("EqualizationLoss label above the background", "losses",
         lambda _: losses.EqualizationLoss(class_frequencies=[1e-4, 0.2, 1e-3])(np.array([1, 4]), _zero_logits(2, 3)),
         Raises(ValueError, r"`y_true` holds 4 .*0\.\.3 \(3 = background\)")),
    Case("EqualizationLoss label -5", "losses",
         lambda _: losses.EqualizationLoss(class_frequencies=[1e-4, 0.2, 1e-3])(np.array([-5, 1]), _zero_logits(2, 3)),
         Raises(ValueError, r"holds -5 .*or -1 for padding")),
    Case("EqualizationLoss background and padding rows", "losses",
         lambda _: losses.EqualizationLoss(class_frequencies=[1e-4, 0.2, 1e-3])(np.array([1, 3, -1]),
                                                                                _zero_logits(3, 3)),
         # row 1 (class 1): weights 1, 1, 1 (tail 0 and 2 masked only for foreground non-targets:
         # w = 1 - T(1 - y): classes 0 and 2 are tail -> 0): ln 2; background row: 3 ln 2; padding ignored
         Handled(_equals((math.log(2) + 3 * math.log(2)) / 2, 1e-5), "(ln 2 + 3 ln 2) / 2 = 1.3863")),
    Case("SoftmaxEqualizationLoss label = num_classes", "losses",
         lambda _: losses.SoftmaxEqualizationLoss(class_frequencies=[1e-4, 0.2, 1e-3])(np.array([3]),
                                                                                       _zero_logits(1, 3)),
         Raises(ValueError, r"`y_true` holds 3 .*0\.\.2 for num_classes=3")),
    Case("EqualizationLossV2 label -2", "losses",
         lambda _: losses.EqualizationLossV2(num_classes=2)(np.array([-2, 0]), _zero_logits(2, 3)),
         Raises(ValueError, r"`labels` holds -2")),
    Case("CircleLoss label outside the classes", "losses",
         lambda _: losses.CircleLoss()(np.array([0, 5]), _zero_logits(2, 3)),
         Raises(ValueError, r"`y_true` holds 5 .*0\.\.2")),
    Case("CircleLoss fractional label", "losses",
         lambda _: losses.CircleLoss()(np.array([0.0, 1.5], "float32"), _zero_logits(2, 3)),
         Raises(ValueError, "must hold integer class ids")),
    Case("EqualizationLoss logits of the wrong width", "losses",
         lambda _: losses.EqualizationLoss(class_frequencies=[1e-4, 0.2, 1e-3])(np.array([1]), _zero_logits(1, 4)),
         Raises(ValueError, "must have 3 classes")),
    Case("dice loss of empty masks", "losses",
         lambda _: dice_loss(np.zeros((2, 4, 4), "float32"), np.zeros((2, 4, 4), "float32")),
         Handled(_equals([1.0, 1.0]), "1 - 2 * 0 / (0 + 0 + eps) = 1, finite (AdelaiDet's formula)")),
    # ops
    Case("roi_align features and boxes of different batch sizes", "ops",
         lambda _: roi_align(FEATURES, np.zeros((3, 2, 4), "float32"), 2, 1.0),
         Raises(ValueError, "`features` holds 2 images but `boxes` holds boxes for 3 images")),
    Case("roi_align boxes with 5 coordinates", "ops", lambda _: roi_align(FEATURES, np.zeros((2, 3, 5), "float32"), 2, 1.0),
         Raises(ValueError, r"`boxes` must be \[B, R, 4\]")),
    Case("roi_align features without a batch axis", "ops", lambda _: roi_align(FEATURES[0], np.zeros((2, 1, 4), "float32"),
                                                                              2, 1.0),
         Raises(ValueError, r"`features` must be \[B, H, W, C\]")),
    Case("roi_align of zero boxes", "ops", lambda _: roi_align(FEATURES, np.zeros((2, 0, 4), "float32"), 2, 1.0),
         Handled(lambda out: tuple(out.shape) == (2, 0, 2, 2, 4) or pytest.fail(str(out.shape)), "[2, 0, 2, 2, 4]")),
    Case("roi_align boxes with NaN and inf coordinates", "ops", lambda _: _nan_roi(),
         Handled(_check_nan_roi, "zeros for those boxes, the others unchanged")),
    Case("roi_align sampling_ratio 0", "ops", lambda _: roi_align(FEATURES, np.zeros((2, 1, 4), "float32"), 2, 1.0,
                                                                  sampling_ratio=0),
         Raises(ValueError, "sampling_ratio")),
    Case("multilevel_roi_align levels of different channels", "ops",
         lambda _: multilevel_roi_align([PYRAMID[0], PYRAMID[1][..., :2]], np.zeros((2, 1, 4), "float32"), 2),
         Raises(ValueError, "same channels")),
    Case("multilevel_roi_align boxes for another batch size", "ops",
         lambda _: multilevel_roi_align(PYRAMID, np.zeros((3, 1, 4), "float32"), 2),
         Raises(ValueError, "holds 2 images but `boxes` holds boxes for 3")),
    Case("multilevel_roi_align empty pyramid", "ops", lambda _: multilevel_roi_align([], np.zeros((2, 1, 4), "float32"), 2),
         Raises(ValueError, "non-empty list")),
    Case("NMS of zero boxes", "ops",
         lambda _: [_np(t).tolist() for t in non_max_suppression(np.zeros((0, 4), "float32"), np.zeros((0,), "float32"), 3)],
         Handled(lambda out: out == [[-1, -1, -1], 0] or pytest.fail(str(out)), "all -1, count 0")),
    Case("NMS boxes and scores of different counts", "ops",
         lambda _: non_max_suppression(BOXES, np.zeros((2,), "float32"), 3),
         Raises(ValueError, "same number of boxes, got 3 and 2")),
    Case("NMS with a NaN score and a NaN box", "ops", lambda _: _nms_non_finite(),
         Handled(lambda out: out == ([2, -1, -1], 1) or pytest.fail(str(out)), "neither is selected")),
    Case("NMS iou_threshold 1.5", "ops", lambda _: non_max_suppression(BOXES, np.ones(3, "float32"), 3, iou_threshold=1.5),
         Raises(ValueError, r"`iou_threshold` must be a number in \[0, 1\]")),
    Case("NMS max_output_size 0", "ops", lambda _: non_max_suppression(BOXES, np.ones(3, "float32"), 0),
         Raises(ValueError, "`max_output_size` must be a positive integer")),
    Case("class-aware NMS classes of another shape", "ops",
         lambda _: class_aware_non_max_suppression(BOXES, np.ones(3, "float32"), np.zeros(2, "int32"), 3),
         Raises(ValueError, "`classes` must have the shape of `scores`")),
    Case("pairwise_iou boxes with 3 coordinates", "ops",
         lambda _: pairwise_iou(np.zeros((2, 3), "float32"), BOXES), Raises(ValueError, r"`boxes1` must be \[\.\.\., 4\]")),
    Case("pairwise_iou of empty boxes", "ops", lambda _: pairwise_iou(np.zeros((2, 4), "float32"), BOXES),
         Handled(_equals(np.zeros((2, 3))), "IoU 0, not NaN")),
    Case("decode_boxes deltas and anchors of different counts", "ops",
         lambda _: decode_boxes(np.zeros((5, 4), "float32"), BOXES), Raises(ValueError, "same number of boxes N")),
    Case("decode_boxes of huge deltas", "ops", lambda _: decode_boxes(np.full((3, 4), 1e30, "float32"), BOXES),
         Handled(lambda out: np.isfinite(_np(out)).all() or pytest.fail(str(_np(out))), "finite boxes (sizes clipped)")),
    # layers: a built block called with another channel count, or a shape it cannot take
    Case("ChannelEquilibrium called with other channels", "layers",
         lambda _: _built(layers.ChannelEquilibrium(), 8)(np.zeros((1, 4, 4, 6), "float32")),
         Raises(ValueError, "layer 'channel_equilibrium.*expected axis -1 of input shape to have value 8")),
    Case("DynamicReLU called with other channels", "layers",
         lambda _: _built(layers.DynamicReLU(), 8)(np.zeros((1, 4, 4, 6), "float32")),
         Raises(ValueError, "expected axis -1 of input shape to have value 8")),
    Case("SqueezeExcite called with other channels", "layers",
         lambda _: _built(layers.SqueezeExcite(), 8)(np.zeros((1, 4, 4, 6), "float32")),
         Raises(ValueError, "expected axis -1 of input shape to have value 8")),
    Case("SlimConv2D channels not divisible by 4", "layers",
         lambda _: layers.SlimConv2D()(np.zeros((1, 4, 4, 6), "float32")),
         Raises(ValueError, "channels must be divisible by 4")),
    Case("SqueezeExcite on a rank-2 input", "layers", lambda _: layers.SqueezeExcite()(np.zeros((2, 8), "float32")),
         Raises(ValueError, "rank >= 3")),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_case(case, tmp_path):
    check_case(case, tmp_path)
