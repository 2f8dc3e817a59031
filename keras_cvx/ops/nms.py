"""Greedy non-maximum suppression with static shapes.

Greedy NMS as in R-CNN/SSD/FCOS (used by NETNet arXiv 2001.06690, TSD arXiv 2003.07540,
CondInst arXiv 2003.05664): repeatedly take the highest-scoring remaining box ``b*`` and
remove every box ``b`` with ``IoU(b, b*) > iou_threshold``; only boxes with
``score > score_threshold`` take part. The selections are those of
``tf.image.non_max_suppression`` (strict ``>`` in both tests, IoU 0 for empty boxes, box
corners put in order first), in descending score order.

Algorithm: a ``fori_loop`` over the ``max_output_size`` output slots, each a vectorised
argmax over the remaining scores and one row of IoUs (``O(max_output_size * N)`` work and
``O(N)`` memory; no ``N x N`` matrix, no Python loop over boxes). Slots left when no box
remains hold ``-1``. Tied scores pick the lowest index (TensorFlow's priority queue does not
promise an order among ties). The class-aware variant suppresses only boxes of the same
class, which is per-class NMS followed by a merge by score (Detectron2's ``batched_nms``
gets the same result with coordinate offsets; a class test needs no offsets).
"""

from keras import ops

from keras_cvx.ops.boxes import pairwise_iou
from keras_cvx.validation import require_positive_int, require_unit_interval


def _ordered_corners(boxes):
    boxes = ops.cast(boxes, "float32")
    low = ops.minimum(boxes[..., :2], boxes[..., 2:])
    high = ops.maximum(boxes[..., :2], boxes[..., 2:])
    return ops.concatenate([low, high], axis=-1)


def _greedy_nms(boxes, scores, classes, max_output_size, iou_threshold, score_threshold):
    require_positive_int("max_output_size", max_output_size)
    require_unit_interval("iou_threshold", iou_threshold, include_one=True)
    boxes, scores = ops.convert_to_tensor(boxes), ops.convert_to_tensor(scores)
    unbatched = len(scores.shape) == 1
    if unbatched:
        boxes, scores = boxes[None], scores[None]
        classes = None if classes is None else ops.convert_to_tensor(classes)[None]
    boxes = _ordered_corners(boxes)
    scores = ops.cast(scores, "float32")
    num_boxes = scores.shape[-1]
    removed = float("-inf")
    remaining = ops.where(scores > float(score_threshold), scores, removed)
    slots = ops.arange(max_output_size, dtype="int32")[None]
    box_ids = ops.arange(num_boxes, dtype="int32")[None]

    def select_one(slot, state):
        remaining, selected = state
        best = ops.cast(ops.argmax(remaining, axis=-1), "int32")[:, None]  # [B, 1]
        found = ops.take_along_axis(remaining, best, axis=-1) > removed  # [B, 1]
        best_box = ops.take_along_axis(boxes, ops.repeat(best[..., None], 4, axis=-1), axis=1)
        suppress = pairwise_iou(best_box, boxes)[:, 0] > iou_threshold
        if classes is not None:
            suppress = ops.logical_and(suppress, classes == ops.take_along_axis(classes, best, axis=-1))
        suppress = ops.logical_and(ops.logical_or(suppress, box_ids == best), found)
        remaining = ops.where(suppress, removed, remaining)
        selected = ops.where(slots == slot, ops.where(found, best, -1), selected)
        return remaining, selected

    # [B, max_output_size] of -1 without a static batch size (serving signatures leave it unknown).
    selected = ops.zeros_like(scores[:, :1], dtype="int32") + ops.full((max_output_size,), -1, "int32")
    _, selected = ops.fori_loop(0, max_output_size, select_one, (remaining, selected))
    num_valid = ops.sum(ops.cast(selected >= 0, "int32"), axis=-1)
    if unbatched:
        return selected[0], num_valid[0]
    return selected, num_valid


def non_max_suppression(boxes, scores, max_output_size, iou_threshold=0.5, score_threshold=float("-inf")):
    """Greedy NMS.

    Args:
        boxes: ``[N, 4]`` or batched ``[B, N, 4]`` ``xyxy`` boxes (any float dtype).
        scores: ``[N]`` or ``[B, N]``.
        max_output_size: static number of output slots ``K``.
        iou_threshold: a box is removed when its IoU with a kept box is ``> iou_threshold``.
        score_threshold: only boxes with ``score > score_threshold`` are kept.

    Returns:
        ``(indices, num_valid)``: int32 ``[K]`` / ``[B, K]`` indices into ``N`` in descending
        score order, padded with ``-1``; int32 ``[]`` / ``[B]`` count of valid indices.
    """
    return _greedy_nms(boxes, scores, None, max_output_size, iou_threshold, score_threshold)


def class_aware_non_max_suppression(boxes, scores, classes, max_output_size, iou_threshold=0.5,
                                    score_threshold=float("-inf")):
    """Greedy NMS where a box only suppresses boxes of its own class.

    ``classes``: integer ``[N]`` / ``[B, N]``. Other arguments and outputs as ``non_max_suppression``.
    """
    classes = ops.cast(ops.convert_to_tensor(classes), "int32")
    return _greedy_nms(boxes, scores, classes, max_output_size, iou_threshold, score_threshold)
