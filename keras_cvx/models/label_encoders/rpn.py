"""RPN training targets: anchors matched to the ground truth, then a balanced sample of them.

Paper: "Faster R-CNN", S. Ren et al., arXiv 1506.01497 (Sec. 3.1.2 "Training RPNs" and
3.1.3): an anchor is positive when its IoU with a ground truth is ``>= 0.7`` or it is one of
that ground truth's best anchors (all ties; mmdet v1's ``min_pos_iou = 0.3`` keeps a ground
truth that overlaps nothing from claiming anchors), negative when its best IoU is ``< 0.3``, and
ignored in between. ``num_samples`` (256) anchors per image are sampled with at most
``positive_fraction`` (50%) positives (``keras_cvx.ops.sample_balanced``). Box targets are the
Faster R-CNN deltas with weights (1, 1, 1, 1).

Differences from the reference implementation: anchors crossing the image border are kept
(mmdet v2 / Detectron2; mmdet v1 ignores them with ``allowed_border = 0``).
"""

import keras
from keras import ops

from keras_cvx.ops.boxes import encode_boxes
from keras_cvx.ops.matching import argmax_iou_match, gather_matches
from keras_cvx.ops.sampling import sample_balanced
from keras_cvx.validation import require_positive_int, require_unit_interval


@keras.saving.register_keras_serializable(package="keras_cvx")
class RPNLabelEncoder:
    """RPN targets for padded ground truth (see the module docstring).

    Args:
        positive_threshold: IoU at or above which an anchor is positive (default 0.7).
        negative_threshold: IoU below which an anchor is negative (default 0.3).
        low_quality_min_iou: smallest IoU of a ground truth's best anchors made positive
            (default 0.3, mmdet v1's ``min_pos_iou``).
        num_samples: anchors sampled per image (default 256).
        positive_fraction: largest fraction of positives among them (default 0.5).

    Call: ``encoder(gt_boxes [B, M, 4], gt_labels [B, M], anchors [N, 4], seed)`` (``xyxy``
    pixels, ``-1`` label padding; ``seed`` an int or a ``keras.random.SeedGenerator``) -> dict of

    * ``"indices"`` int32 ``[B, S]``: the sampled anchors (``-1`` in unused slots);
    * ``"labels"`` int32 ``[B, S]``: 1 positive, 0 negative, -1 unused slot;
    * ``"box_targets"`` float32 ``[B, S, 4]``: deltas of the matched ground truth (0 unless positive).

    Example:

    >>> import numpy as np
    >>> from keras_cvx.models.label_encoders import RPNLabelEncoder
    >>> anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 6], [20, 20, 30, 30]], "float32")
    >>> targets = RPNLabelEncoder(num_samples=3)(np.array([[[0, 0, 10, 10]]], "float32"), np.array([[0]]),
    ...                                          anchors, seed=0)
    >>> sorted(np.asarray(targets["labels"])[0].tolist())     # IoU 1: positive, 0.6: ignored (not sampled), 0: negative
    [-1, 0, 1]
    """

    def __init__(self, positive_threshold=0.7, negative_threshold=0.3, low_quality_min_iou=0.3, num_samples=256,
                 positive_fraction=0.5):
        self.positive_threshold = require_unit_interval("positive_threshold", positive_threshold, include_one=True)
        self.negative_threshold = require_unit_interval("negative_threshold", negative_threshold, include_one=True)
        self.low_quality_min_iou = require_unit_interval("low_quality_min_iou", low_quality_min_iou,
                                                         include_one=True)
        self.num_samples = require_positive_int("num_samples", num_samples)
        self.positive_fraction = require_unit_interval("positive_fraction", positive_fraction, include_one=True)

    def __call__(self, gt_boxes, gt_labels, anchors, seed=None):
        gt_boxes = ops.cast(gt_boxes, "float32")
        matched, state = argmax_iou_match(gt_boxes, gt_labels, anchors, self.positive_threshold,
                                          self.negative_threshold, True, self.low_quality_min_iou)
        indices, labels = sample_balanced(state, self.num_samples, self.positive_fraction, seed)
        slot = ops.maximum(indices, 0)
        matched = ops.where(labels == 1, ops.take_along_axis(matched, slot, axis=1), -1)
        deltas = encode_boxes(gather_matches(gt_boxes, matched), ops.take(anchors, slot, axis=0))
        return {"indices": indices, "labels": labels,
                "box_targets": ops.where((labels == 1)[..., None], deltas, 0.0)}

    def get_config(self):
        return {"positive_threshold": self.positive_threshold, "negative_threshold": self.negative_threshold,
                "low_quality_min_iou": self.low_quality_min_iou, "num_samples": self.num_samples,
                "positive_fraction": self.positive_fraction}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
