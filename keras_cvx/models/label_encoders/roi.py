"""Second-stage (R-CNN) training targets: proposals matched to the ground truth and sampled.

Paper: "Fast R-CNN", R. Girshick, arXiv 1504.08083 (Sec. 2.3 "Mini-batch sampling"), as
Faster R-CNN + FPN (arXiv 1506.01497, 1612.03144) and TSD (arXiv 2003.07540 §4: both the
sibling and the TSD branches use the same samples) train it:

* the ground-truth boxes are added to the proposals (so every object has a positive RoI);
* each candidate takes its highest-IoU ground truth: ``IoU >= foreground_threshold`` (0.5)
  positive with that ground truth's class, below it background (no ignored band, no
  low-quality matches);
* ``num_samples`` (512) RoIs per image with at most ``positive_fraction`` (25%) positives,
  uniformly at random (``keras_cvx.ops.sample_balanced``).

Box targets are the R-CNN deltas of the matched ground truth relative to the RoI with
weights (10, 10, 5, 5). Labels use the package's convention: the object class ``0..K-1`` on
positives, ``K`` (background, the last column) on negatives, ``-1`` on unused slots (when an
image has fewer than ``num_samples`` candidates).
"""

import keras
from keras import ops

from keras_cvx.ops.boxes import BOX_CODER_WEIGHTS, encode_boxes
from keras_cvx.ops.matching import argmax_iou_match, gather_matches
from keras_cvx.ops.sampling import sample_balanced
from keras_cvx.validation import require_positive_int, require_unit_interval


@keras.saving.register_keras_serializable(package="keras_cvx")
class RoISampler:
    """R-CNN targets of a batch of proposals (see the module docstring).

    Args:
        num_classes: object classes ``K`` (background is ``K``).
        foreground_threshold: IoU at or above which a RoI is positive (default 0.5).
        num_samples: RoIs per image (default 512).
        positive_fraction: largest fraction of positives (default 0.25).
        box_coder_weights: ``(wx, wy, ww, wh)`` of the targets (default ``(10, 10, 5, 5)``).

    Call: ``sampler(proposals [B, P, 4], proposal_valid [B, P], gt_boxes [B, M, 4],
    gt_labels [B, M], seed)`` -> dict of

    * ``"rois"`` float32 ``[B, S, 4]`` (``S = num_samples``; zeros in unused slots);
    * ``"labels"`` int32 ``[B, S]``: class on positives, ``K`` on negatives, ``-1`` unused;
    * ``"matched_boxes"`` float32 ``[B, S, 4]``: the matched ground truth of positives (zeros elsewhere);
    * ``"box_targets"`` float32 ``[B, S, 4]``: ``encode(matched_boxes, rois)`` on positives, 0 elsewhere.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.models.label_encoders import RoISampler
    >>> proposals = np.array([[[0, 0, 10, 10], [30, 30, 40, 40]]], "float32")
    >>> sampler = RoISampler(3, num_samples=4, positive_fraction=0.5)
    >>> out = sampler(proposals, np.ones((1, 2), bool), np.array([[[0, 0, 10, 11]]], "float32"), np.array([[2]]),
    ...               seed=0)
    >>> sorted(np.asarray(out["labels"])[0].tolist())   # the GT and its match are class 2, one background
    [-1, 2, 2, 3]
    """

    def __init__(self, num_classes, foreground_threshold=0.5, num_samples=512, positive_fraction=0.25,
                 box_coder_weights=BOX_CODER_WEIGHTS):
        self.num_classes = require_positive_int("num_classes", num_classes)
        self.foreground_threshold = require_unit_interval("foreground_threshold", foreground_threshold,
                                                          include_one=True)
        self.num_samples = require_positive_int("num_samples", num_samples)
        self.positive_fraction = require_unit_interval("positive_fraction", positive_fraction, include_one=True)
        if len(box_coder_weights) != 4:
            raise ValueError(f"`box_coder_weights` must be 4 numbers, got {box_coder_weights!r}.")
        self.box_coder_weights = tuple(float(w) for w in box_coder_weights)

    def __call__(self, proposals, proposal_valid, gt_boxes, gt_labels, seed=None):
        gt_boxes = ops.cast(gt_boxes, "float32")
        gt_labels = ops.cast(gt_labels, "int32")
        candidates = ops.concatenate([ops.cast(proposals, "float32"), gt_boxes], axis=1)
        valid = ops.concatenate([ops.cast(proposal_valid, "bool"), gt_labels >= 0], axis=1)
        threshold = self.foreground_threshold
        matched, state = argmax_iou_match(gt_boxes, gt_labels, candidates, threshold, threshold, False)
        state = ops.where(valid, state, -1)
        indices, sampled = sample_balanced(state, self.num_samples, self.positive_fraction, seed)
        slot = ops.maximum(indices, 0)
        used = sampled >= 0
        positive = sampled == 1
        rois = ops.where(used[..., None], ops.take_along_axis(candidates, slot[..., None], axis=1), 0.0)
        matched = ops.where(positive, ops.take_along_axis(matched, slot, axis=1), -1)
        matched_boxes = gather_matches(gt_boxes, matched)
        labels = ops.where(positive, gather_matches(gt_labels, matched), ops.where(used, self.num_classes, -1))
        deltas = encode_boxes(matched_boxes, rois, self.box_coder_weights)
        return {"rois": rois, "labels": labels, "matched_boxes": matched_boxes,
                "box_targets": ops.where(positive[..., None], deltas, 0.0)}

    def get_config(self):
        return {"num_classes": self.num_classes, "foreground_threshold": self.foreground_threshold,
                "num_samples": self.num_samples, "positive_fraction": self.positive_fraction,
                "box_coder_weights": list(self.box_coder_weights)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
