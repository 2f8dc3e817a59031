"""Region proposals from the RPN outputs, with static shapes.

Paper: "Faster R-CNN", S. Ren et al., arXiv 1506.01497 (Sec. 3.1, 3.3), on a feature pyramid
("Feature Pyramid Networks for Object Detection", arXiv 1612.03144, Sec. 4.1), as mmdet v2 /
Detectron2 compute them. Per image::

    per level: the pre_nms_top_k anchors of highest objectness logit
    decode their deltas (weights 1, 1, 1, 1) and clip the boxes to the image
    drop boxes narrower or lower than min_size (their score becomes -inf)
    greedy NMS at iou_threshold (0.7) within each level (boxes of different levels never
        suppress each other: the level is the "class" of a class-aware NMS)
    the post_nms_top_k best survivors over all levels, by objectness

Defaults are the training values (2000 per level, 2000 kept); at inference Faster R-CNN uses
1000 and 1000 (``FasterRCNN`` passes both). Proposals carry no gradient (the approximate joint
training of the paper, Sec. 3.2).

Output: ``proposals`` float32 ``[B, P, 4]`` ``xyxy`` pixels (zeros in unused slots),
``scores`` float32 ``[B, P]`` (objectness logits, ``-inf`` in unused slots) and ``valid`` bool
``[B, P]``, ``P = post_nms_top_k``, best first.

Differences from the reference implementation: mmdet v1 (the TSD code) keeps 2000 per level
after NMS and then the best 2000 overall, which is the same set as one level-aware NMS followed
by the best 2000 (NMS within a level does not depend on other levels); the slots are padded
instead of variable-length.
"""

import keras
from keras import ops

from keras_cvx.ops.boxes import clip_boxes, decode_boxes
from keras_cvx.ops.nms import class_aware_non_max_suppression
from keras_cvx.validation import require_positive_int, require_unit_interval


@keras.saving.register_keras_serializable(package="keras_cvx")
class ProposalGenerator(keras.layers.Layer):
    """RPN proposals: per-level top-k, decoding, clipping, level-aware NMS, top-k overall.

    Paper: "Faster R-CNN", arXiv 1506.01497, Sec. 3.1; see the module docstring.

    Args:
        pre_nms_top_k: candidates per level before NMS (default 2000).
        post_nms_top_k: proposals kept per image (default 2000).
        iou_threshold: NMS IoU threshold (default 0.7).
        min_size: smallest width and height of a kept proposal in pixels (default 0).

    Call: ``generator(objectness_logits [B, N], anchor_deltas [B, N, 4], anchors [N, 4],
    level_sizes=..., image_size=...)`` with ``level_sizes`` the anchor count of each level
    (Python ints, level order; ``None``: one level) and ``image_size`` ``(height, width)`` -> dict ``proposals``, ``scores``,
    ``valid`` (module docstring).

    Example:

    >>> import numpy as np
    >>> from keras_cvx.layers import ProposalGenerator
    >>> anchors = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 40, 40]], "float32")
    >>> out = ProposalGenerator(post_nms_top_k=3)(np.array([[3.0, 2.0, 1.0]], "float32"),
    ...                                           np.zeros((1, 3, 4), "float32"), anchors, image_size=(32, 32))
    >>> np.asarray(out["proposals"])[0].tolist(), np.asarray(out["valid"])[0].tolist()
    ([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 32.0, 32.0], [0.0, 0.0, 0.0, 0.0]], [True, True, False])
    """

    def __init__(self, pre_nms_top_k=2000, post_nms_top_k=2000, iou_threshold=0.7, min_size=0.0, **kwargs):
        super().__init__(**kwargs)
        self.pre_nms_top_k = require_positive_int("pre_nms_top_k", pre_nms_top_k)
        self.post_nms_top_k = require_positive_int("post_nms_top_k", post_nms_top_k)
        self.iou_threshold = require_unit_interval("iou_threshold", iou_threshold, include_one=True)
        if not float(min_size) >= 0.0:
            raise ValueError(f"`min_size` must be >= 0, got {min_size!r}.")
        self.min_size = float(min_size)

    def build(self, *shapes):
        pass

    def call(self, objectness_logits, anchor_deltas, anchors, level_sizes=None, image_size=None):
        logits = ops.stop_gradient(ops.cast(objectness_logits, "float32"))
        deltas = ops.stop_gradient(ops.cast(anchor_deltas, "float32"))
        anchors = ops.cast(anchors, "float32")
        if image_size is None:
            raise ValueError("`image_size` (height, width) must be given to clip the proposals.")
        sizes = [logits.shape[1]] if level_sizes is None else [int(s) for s in level_sizes]
        if sum(sizes) != logits.shape[1]:
            raise ValueError(f"`level_sizes` {sizes} must add up to the {logits.shape[1]} anchors.")
        scores, boxes, levels, start = [], [], [], 0
        for level, size in enumerate(sizes):
            values, index = ops.top_k(logits[:, start : start + size], min(self.pre_nms_top_k, size))
            index = ops.cast(index, "int32") + start
            level_deltas = ops.take_along_axis(deltas, index[..., None], axis=1)
            decoded = decode_boxes(level_deltas, ops.take(anchors, index, axis=0))
            scores.append(values)
            boxes.append(clip_boxes(decoded, image_size))
            levels.append(ops.full(ops.shape(index), level, "int32"))
            start += size
        scores, boxes, levels = (ops.concatenate(v, axis=1) for v in (scores, boxes, levels))
        wide = (boxes[..., 2] - boxes[..., 0] >= self.min_size) & (boxes[..., 3] - boxes[..., 1] >= self.min_size)
        scores = ops.where(wide & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1]), scores,
                           float("-inf"))
        selected, _ = class_aware_non_max_suppression(boxes, scores, levels, self.post_nms_top_k,
                                                      self.iou_threshold)
        valid = selected >= 0
        index = ops.maximum(selected, 0)
        return {"proposals": ops.where(valid[..., None], ops.take_along_axis(boxes, index[..., None], axis=1), 0.0),
                "scores": ops.where(valid, ops.take_along_axis(scores, index, axis=1), float("-inf")),
                "valid": valid}

    def compute_output_shape(self, objectness_shape, *args, **kwargs):
        batch, slots = objectness_shape[0], self.post_nms_top_k
        return {"proposals": (batch, slots, 4), "scores": (batch, slots), "valid": (batch, slots)}

    def get_config(self):
        config = super().get_config()
        config.update(pre_nms_top_k=self.pre_nms_top_k, post_nms_top_k=self.post_nms_top_k,
                      iou_threshold=self.iou_threshold, min_size=self.min_size)
        return config
