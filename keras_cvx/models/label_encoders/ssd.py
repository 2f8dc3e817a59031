"""SSD target assignment: ground truth matched to the anchors, boxes coded as SSD deltas.

Paper: "SSD: Single Shot MultiBox Detector", W. Liu et al., arXiv 1512.02325 (Sec. 2.2
"Matching strategy"; the box coding of Faster R-CNN with SSD's variances 0.1 / 0.2), as
NETNet trains it (arXiv 2001.06690). Built on ``keras_cvx.ops.matching.ssd_match`` and
``keras_cvx.ops.boxes.encode_boxes``.

Each ground truth takes its best anchor (a later ground truth wins a shared best anchor, as
ssd.pytorch), then every anchor whose best IoU is ``>= iou_threshold`` (0.5) takes that
ground truth. Box targets: ``(10 (cx − cx_a) / w_a, 10 (cy − cy_a) / h_a, 5 log(w / w_a),
5 log(h / h_a))`` in pixels (the same numbers as SSD's normalised coding, both sides scale).
"""

import keras
from keras import ops

from keras_cvx.ops.boxes import BOX_CODER_WEIGHTS, encode_boxes
from keras_cvx.ops.matching import gather_matches, ssd_match
from keras_cvx.validation import require_unit_interval


@keras.saving.register_keras_serializable(package="keras_cvx")
class SSDLabelEncoder:
    """SSD targets for padded ground truth (see the module docstring).

    Args:
        iou_threshold: IoU at or above which an anchor is positive (0.5 in SSD).
        box_coder_weights: ``(wx, wy, ww, wh)``, SSD's variances inverted: ``(10, 10, 5, 5)``.

    Call: ``encoder(gt_boxes [B, M, 4], gt_labels [B, M], anchors [N, 4])`` (``xyxy`` pixels,
    labels 0-based with ``-1`` padding) -> dict of

    * ``"box_targets"`` float32 ``[B, N, 4]``: SSD-coded deltas (0 on negatives);
    * ``"class_targets"`` int32 ``[B, N]``: ``label + 1`` on positives, 0 (background) elsewhere.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.models.label_encoders import SSDLabelEncoder
    >>> anchors = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], "float32")
    >>> targets = SSDLabelEncoder()(np.array([[[21, 19, 41, 40]]], "float32"), np.array([[4]]), anchors)
    >>> np.asarray(targets["class_targets"]).tolist()
    [[0, 5]]
    """

    def __init__(self, iou_threshold=0.5, box_coder_weights=BOX_CODER_WEIGHTS):
        self.iou_threshold = require_unit_interval("iou_threshold", iou_threshold, include_one=True)
        if len(box_coder_weights) != 4:
            raise ValueError(f"`box_coder_weights` must be 4 numbers, got {box_coder_weights!r}.")
        self.box_coder_weights = tuple(float(w) for w in box_coder_weights)

    def __call__(self, gt_boxes, gt_labels, anchors):
        gt_boxes = ops.cast(gt_boxes, "float32")
        matched, state = ssd_match(gt_boxes, gt_labels, anchors, self.iou_threshold)
        positive = state == 1
        deltas = encode_boxes(gather_matches(gt_boxes, matched), anchors, self.box_coder_weights)
        labels = gather_matches(ops.cast(gt_labels, "int32"), matched, fill_value=-1)
        return {
            "box_targets": ops.where(positive[..., None], deltas, 0.0),
            "class_targets": ops.where(positive, labels + 1, 0),
        }

    def get_config(self):
        return {"iou_threshold": self.iou_threshold, "box_coder_weights": list(self.box_coder_weights)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
