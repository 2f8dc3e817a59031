"""RetinaNet training targets: every anchor matched to the ground truth by IoU.

Paper: "Focal Loss for Dense Object Detection", T.-Y. Lin et al., arXiv 1708.02002 (Sec. 4
"Anchors": an anchor is assigned to a ground-truth box when their IoU is ``>= 0.5`` and to
background when it is in ``[0, 0.4)``; anchors in ``[0.4, 0.5)`` are ignored during training;
box targets are the offsets of the assigned box, Faster R-CNN's parameterization, arXiv
1506.01497 eq. 2), as Detectron2 runs it (``RetinaNet.label_anchors``: ``Matcher([0.4, 0.5],
[0, -1, 1], allow_low_quality_matches=True)``, ``Box2BoxTransform`` weights (1, 1, 1, 1)).
Built on ``keras_cvx.ops.matching.argmax_iou_match``: each anchor takes its highest-IoU ground
truth; with low-quality matches every ground truth's best anchors (all ties) are positive
too, each keeping its own highest-IoU ground truth. Every anchor gets a target (no sampling:
the focal loss is summed over all of them).

Labels: the class of positives, ``-1`` background (negatives), ``-2`` ignored. (Detectron2
writes ``K`` for background and ``-1`` for ignored; here ``-1`` is the package-wide "no object"
label.) Box targets: ``encode_boxes(matched box, anchor, box_weights)``, 0 unless positive.

Differences from the reference implementation: a ground truth whose best IoU with every anchor
is 0 claims no anchor (Detectron2's matcher would make every anchor with IoU 0 to it
"highest quality", i.e. positive); padding rows (label ``-1``) are never matched.
"""

import keras
from keras import ops

from keras_cvx.ops.boxes import encode_boxes
from keras_cvx.ops.matching import argmax_iou_match, gather_matches
from keras_cvx.validation import require_positive, require_unit_interval

IGNORED_LABEL = -2
"""Label of anchors between the thresholds: no classification loss."""


@keras.saving.register_keras_serializable(package="keras_cvx")
class RetinaNetLabelEncoder:
    """RetinaNet targets for padded ground truth (see the module docstring).

    Paper: "Focal Loss for Dense Object Detection", T.-Y. Lin et al.,
    https://arxiv.org/abs/1708.02002, Sec. 4 ("Anchors"); Detectron2's matching.

    Args:
        positive_threshold: IoU at or above which an anchor is positive (default 0.5).
        negative_threshold: IoU below which an anchor is background (default 0.4); in between
            it is ignored.
        allow_low_quality_matches: make every ground truth's best anchors (all ties, best
            IoU > 0) positive even below ``positive_threshold`` (default True, Detectron2's).
        box_weights: ``(w_x, w_y, w_w, w_h)`` of the delta coding (default ``(1, 1, 1, 1)``,
            Detectron2's ``MODEL.RETINANET.BBOX_REG_WEIGHTS``).

    Call: ``encoder(gt_boxes [B, M, 4], gt_labels [B, M], anchors [N, 4])`` (``xyxy`` pixels,
    labels 0-based with ``-1`` padding; the anchors of ``FPNAnchorGenerator``) -> dict of

    * ``"labels"`` int32 ``[B, N]``: class of positives, ``-1`` background, ``-2`` ignored;
    * ``"box_targets"`` float32 ``[B, N, 4]``: deltas of the matched box (0 unless positive);
    * ``"matched_gt"`` int32 ``[B, N]``: index of the matched box, ``-1`` unless positive.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.models.label_encoders.retinanet import RetinaNetLabelEncoder
    >>> anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 4.5], [0, 0, 10, 3]], "float32")
    >>> targets = RetinaNetLabelEncoder()(np.array([[[0, 0, 10, 10]]], "float32"), np.array([[7]]), anchors)
    >>> np.asarray(targets["labels"])[0].tolist()        # IoU 1, 0.5, 0.45, 0.3
    [7, 7, -2, -1]
    """

    def __init__(self, positive_threshold=0.5, negative_threshold=0.4, allow_low_quality_matches=True,
                 box_weights=(1.0, 1.0, 1.0, 1.0)):
        self.positive_threshold = require_unit_interval("positive_threshold", positive_threshold, include_one=True)
        self.negative_threshold = require_unit_interval("negative_threshold", negative_threshold, include_one=True)
        if self.negative_threshold > self.positive_threshold:
            raise ValueError(f"`negative_threshold` ({negative_threshold}) must not exceed `positive_threshold` "
                             f"({positive_threshold}).")
        self.allow_low_quality_matches = bool(allow_low_quality_matches)
        if isinstance(box_weights, str) or not hasattr(box_weights, "__len__") or len(box_weights) != 4:
            raise ValueError(f"`box_weights` must be 4 positive numbers (wx, wy, ww, wh), got {box_weights!r}.")
        self.box_weights = tuple(require_positive("box_weights", w) for w in box_weights)

    def __call__(self, gt_boxes, gt_labels, anchors):
        gt_boxes = ops.cast(gt_boxes, "float32")
        gt_labels = ops.cast(gt_labels, "int32")
        anchors = ops.cast(anchors, "float32")
        matched, state = argmax_iou_match(gt_boxes, gt_labels, anchors, self.positive_threshold,
                                          self.negative_threshold, self.allow_low_quality_matches)
        positive = state == 1
        labels = ops.where(positive, gather_matches(gt_labels, matched, fill_value=-1),
                           ops.where(state == 0, -1, IGNORED_LABEL))
        deltas = encode_boxes(gather_matches(gt_boxes, matched), anchors, self.box_weights)
        return {"labels": ops.cast(labels, "int32"),
                "box_targets": ops.where(positive[..., None], deltas, 0.0),
                "matched_gt": ops.cast(matched, "int32")}

    def get_config(self):
        return {"positive_threshold": self.positive_threshold, "negative_threshold": self.negative_threshold,
                "allow_low_quality_matches": self.allow_low_quality_matches, "box_weights": list(self.box_weights)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
