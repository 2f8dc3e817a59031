"""Greedy non-maximum suppression with static shapes, computed block by block.

Greedy NMS as in R-CNN/SSD/FCOS (used by NETNet arXiv 2001.06690, TSD arXiv 2003.07540,
CondInst arXiv 2003.05664): repeatedly take the highest-scoring remaining box ``b*`` and
remove every box ``b`` with ``IoU(b, b*) > iou_threshold``; only boxes with
``score > score_threshold`` take part. The selections are those of
``tf.image.non_max_suppression``, checked against it on random, tied and at-threshold cases:

* a pair whose IoU equals ``iou_threshold`` exactly is **kept** (suppression needs ``>``);
* a box whose score equals ``score_threshold`` exactly is **dropped** (selection needs ``>``);
* tied scores are taken in index order (lower index first);
* ``IoU = inter / (area_a + area_b - inter)`` in float32 and 0 when either box has area
  ``<= 0``; box corners are put in order first (``(x2, y2, x1, y1)`` is the same box).

Algorithm (the tiled "padded" NMS TensorFlow uses on TPUs, ``non_max_suppression_padded``):
a ``while_loop`` takes the candidates ``T`` at a time in score order (``top_k`` of the
remaining scores, a partial sort, lower index first among ties; ``T`` is a power of two in
``[128, 512]`` near ``max_output_size / 4``). For each tile it (1) drops the boxes whose IoU
with an already kept box is above the threshold (a ``[T, max_output_size]`` IoU block),
(2) runs greedy NMS inside the tile as the fixed point of
``keep_i = candidate_i and not any_{j < i}(keep_j and IoU_ij > t)`` (exact: entry ``i`` is
final once the entries before it are, so the iteration reaches the greedy answer, in a few
rounds in practice), and (3) appends the survivors to the kept list. The loop stops as
soon as every image has ``max_output_size`` boxes or no candidate above the score threshold
is left, so the work is about ``tiles visited x (T^2 + T max_output_size)`` IoUs instead of
``N^2``, and no full sort of the ``N`` scores is made. Images of a batch go through the same
loop together (no Python loop over images; the batch size may be unknown, as in serving
signatures).

The class-aware variant compares classes in the same IoU blocks (a box suppresses only boxes
of its own class): exactly per-class NMS followed by a merge by score, without an
``N x N x classes`` tensor and without Detectron2's coordinate-offset trick (offsets of
thousands of pixels round the float32 coordinates and can flip pairs at the threshold).

Zero boxes (``N = 0``) give all ``-1`` indices and a count of 0. A box with a NaN score or a
non-finite coordinate is never selected (``tf.image.non_max_suppression`` may select it).
"""

from keras import ops

from keras_cvx.validation import require_positive_int, require_unit_interval


def _tile_size(num_boxes, max_output_size):
    """Boxes per tile: the power of two in ``[128, 512]`` nearest above ``max_output_size / 4``,
    at most ``N``. Measured on CPU (XLA, TF and JAX): 128 is fastest for 100-300 outputs from
    1k-5k boxes, 256-512 for 1,000 outputs from 20k boxes; a tile costs ``T^2 + T K`` IoUs."""
    tile = 128
    while tile < min(max_output_size / 4, 512):
        tile *= 2
    return min(tile, num_boxes)


def _corners(boxes):
    """``[B, N, 4]`` boxes -> ``(x1, y1, x2, y2, area)``, each float32 ``[B, N]``, with the
    corners in order (arrays of coordinates vectorise better than ``[..., 4]`` slices) and
    ``area = +inf`` where the box is empty, so that its IoU with anything is 0."""
    boxes = ops.cast(boxes, "float32")
    x1, y1 = ops.minimum(boxes[..., 0], boxes[..., 2]), ops.minimum(boxes[..., 1], boxes[..., 3])
    x2, y2 = ops.maximum(boxes[..., 0], boxes[..., 2]), ops.maximum(boxes[..., 1], boxes[..., 3])
    area = (y2 - y1) * (x2 - x1)
    return x1, y1, x2, y2, ops.where(area > 0.0, area, float("inf"))


def _iou_above(a, b, threshold):
    """``IoU > threshold`` for every pair of ``a = (x1, y1, x2, y2, area)`` ``[B, T]`` and ``b``
    ``[B, M]`` -> ``[B, T, M]`` bool, with ``tf.image.non_max_suppression``'s arithmetic:
    ``inter / (area_a + area_b - inter)`` in float32 (an empty box has area ``+inf`` here,
    which gives its IoU 0 as TensorFlow does, without a select per pair)."""
    a = [t[:, :, None] for t in a]
    b = [t[:, None, :] for t in b]
    inter_w = ops.maximum(ops.minimum(a[2], b[2]) - ops.maximum(a[0], b[0]), 0.0)
    inter_h = ops.maximum(ops.minimum(a[3], b[3]) - ops.maximum(a[1], b[1]), 0.0)
    inter = inter_h * inter_w
    return inter / (a[4] + b[4] - inter) > threshold


def _same_class(classes_a, classes_b):
    return classes_a[:, :, None] == classes_b[:, None, :]


def _greedy_nms(boxes, scores, classes, max_output_size, iou_threshold, score_threshold):
    require_positive_int("max_output_size", max_output_size)
    iou_threshold = require_unit_interval("iou_threshold", iou_threshold, include_one=True)
    score_threshold = float(score_threshold)
    boxes, scores = ops.convert_to_tensor(boxes), ops.convert_to_tensor(scores)
    if len(scores.shape) not in (1, 2) or tuple(boxes.shape[-1:]) != (4,) or len(boxes.shape) != len(scores.shape) + 1:
        raise ValueError(
            f"`boxes` must be [N, 4] or [B, N, 4] and `scores` [N] or [B, N], got shapes {tuple(boxes.shape)} "
            f"and {tuple(scores.shape)}."
        )
    if boxes.shape[-2] is not None and scores.shape[-1] is not None and boxes.shape[-2] != scores.shape[-1]:
        raise ValueError(
            f"`boxes` and `scores` must hold the same number of boxes, got {boxes.shape[-2]} and {scores.shape[-1]}."
        )
    unbatched = len(scores.shape) == 1
    if classes is not None:
        classes = ops.cast(ops.convert_to_tensor(classes), "int32")
        if tuple(classes.shape) != tuple(scores.shape)[-len(classes.shape):] or len(classes.shape) > len(scores.shape):
            raise ValueError(
                f"`classes` must have the shape of `scores` {tuple(scores.shape)} (or [N]), got {tuple(classes.shape)}."
            )
    if unbatched:
        boxes, scores = boxes[None], scores[None]
    scores = ops.cast(scores, "float32")
    num_boxes = scores.shape[-1]
    if num_boxes is None:
        raise ValueError("The number of boxes `N` must be static (known when the function is traced).")
    # [B, K] of -1 without a static batch size (serving signatures leave it unknown).
    batch_zeros = ops.cast(ops.sum(ops.zeros_like(scores), axis=-1, keepdims=True), "int32")  # [B, 1]
    selected = batch_zeros + ops.full((max_output_size,), -1, "int32")
    if num_boxes == 0:
        num_valid = batch_zeros[:, 0]
        return (selected[0], num_valid[0]) if unbatched else (selected, num_valid)
    if classes is not None and len(classes.shape) < len(scores.shape):
        classes = batch_zeros + classes[None]
    boxes = _corners(boxes)
    box_ids = ops.arange(num_boxes, dtype="int32")
    tile = _tile_size(num_boxes, max_output_size)
    num_tiles = -(-num_boxes // tile)
    earlier = ops.arange(tile)[None, :] < ops.arange(tile)[:, None]  # [T, T]: j before i
    tile_rank = ops.cast(tile - ops.arange(tile), "float32")  # [T]: earlier entries rank higher
    slots = ops.arange(max_output_size, dtype="int32")[None]  # [1, K]

    def tile_step(index, key, kept, selected, count, more, first=False):
        # The next T candidates in (score desc, index asc) order; top_k is a partial sort.
        tile_key, tile_ids = ops.top_k(key, tile)
        tile_ids = ops.cast(tile_ids, "int32")
        tile_valid = tile_key > float("-inf")
        # The last entry taken, by reductions: a slice of top_k's output at an offset would
        # stop XLA from turning the sort into its partial-sort TopK kernel.
        last_key = ops.min(tile_key, axis=1, keepdims=True)
        last_id = ops.max(ops.where(tile_key == last_key, tile_ids, -1), axis=1, keepdims=True)
        key = ops.where((key < last_key) | ((key == last_key) & (box_ids > last_id)), key, float("-inf"))
        current = [ops.take_along_axis(t, tile_ids, axis=1) for t in boxes]
        # (2) greedy inside the tile, as a fixed point of "kept j before i suppresses i".
        within = _iou_above(current, current, iou_threshold) & earlier
        if classes is not None:
            current.append(ops.take_along_axis(classes, tile_ids, axis=1))
            within = within & _same_class(current[5], current[5])
        candidate = tile_valid
        if not first:
            # (1) suppressed by a box kept from an earlier tile (unused slots have IoU 0).
            by_kept = _iou_above(current, kept[:5], iou_threshold)
            if classes is not None:
                by_kept = by_kept & _same_class(current[5], kept[5])
            candidate = candidate & ~ops.any(by_kept, axis=-1)

        def suppress(keep):
            return candidate & ~ops.any(within & keep[:, None, :], axis=-1)

        def not_converged(keep, previous):
            return ops.any(keep != previous)

        def iterate(keep, previous):
            return suppress(keep), keep

        keep, _ = ops.while_loop(not_converged, iterate, (suppress(candidate), candidate))
        # (3) append the survivors, in score order, at slots count, count + 1, ...
        _, compact = ops.top_k(ops.where(keep, tile_rank, 0.0), tile)  # survivors first, in order
        relative = slots - count[:, None]  # [B, K]
        new_kept = ops.sum(ops.cast(keep, "int32"), axis=1)
        lands = (relative >= 0) & (relative < new_kept[:, None])
        source = ops.take_along_axis(ops.cast(compact, "int32"), ops.clip(relative, 0, tile - 1), axis=1)
        current.append(tile_ids)
        kept = [ops.where(lands, ops.take_along_axis(t, source, axis=1), k) for t, k in zip(current, kept + [selected])]
        selected = kept.pop()
        count = ops.minimum(count + new_kept, max_output_size)
        # An image is done when its list is full or this tile already reached the invalid boxes.
        more = ops.any((count < max_output_size) & (last_key[:, 0] > float("-inf")))
        return index + 1, key, kept, selected, count, more

    def more_to_do(index, key, kept, selected, count, more):
        return (index < num_tiles) & more

    # Invalid boxes (score not above the threshold, NaN score, a non-finite coordinate) get
    # key -inf: top_k puts them last and they are never kept.
    finite_box = ops.all(ops.stack([ops.isfinite(c) for c in boxes[:4]], axis=-1), axis=-1)
    key = ops.where((scores > score_threshold) & finite_box, scores, float("-inf"))
    zeros = ops.cast(selected * 0, "float32")  # [B, K]
    kept = [zeros] * 4 + [zeros + float("inf")] + ([] if classes is None else [selected])  # unused: IoU 0
    state = (ops.convert_to_tensor(0, "int32"), key, kept, selected, batch_zeros[:, 0], ops.convert_to_tensor(True))
    state = tile_step(*state, first=True)  # peeled: often one tile fills the output
    if num_tiles > 1:
        state = ops.while_loop(more_to_do, tile_step, state)
    selected, num_valid = state[3:5]
    if unbatched:
        return selected[0], num_valid[0]
    return selected, num_valid


def non_max_suppression(boxes, scores, max_output_size, iou_threshold=0.5, score_threshold=float("-inf")):
    """Greedy non-maximum suppression, batched, with static shapes.

    Selects what ``tf.image.non_max_suppression`` selects (see the module docstring for the
    threshold, tie and IoU conventions), computed tile by tile so that the work follows the
    number of kept boxes. Compiles under XLA and ``jax.jit``; boxes and scores are processed
    in float32 whatever their dtype.

    Reference: greedy NMS as in "Rich feature hierarchies for accurate object detection and
    semantic segmentation" (R-CNN, arXiv 1311.2524, Sec. 2.2) and SSD (arXiv 1512.02325,
    Sec. 2.1); tiling as in TensorFlow's padded NMS for TPUs.

    Args:
        boxes: ``[N, 4]`` or batched ``[B, N, 4]`` ``xyxy`` boxes (any float dtype; corners
            may be in either order). ``N`` must be static; ``B`` may be unknown.
        scores: ``[N]`` or ``[B, N]``.
        max_output_size: static number of output slots ``K`` (a positive int).
        iou_threshold: a box is removed when its IoU with a kept box is ``> iou_threshold``
            (default 0.5; a pair exactly at the threshold is kept).
        score_threshold: only boxes with ``score > score_threshold`` are kept (default
            ``-inf``: every finite score).

    Returns:
        ``(indices, num_valid)``: int32 ``[K]`` / ``[B, K]`` indices into ``N`` in descending
        score order, padded with ``-1``; int32 ``[]`` / ``[B]`` count of valid indices.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.ops import non_max_suppression
    >>> boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], "float32")
    >>> indices, count = non_max_suppression(boxes, np.array([0.9, 0.8, 0.7], "float32"), 3)
    >>> [int(i) for i in indices], int(count)
    ([0, 2, -1], 2)

    Differences from the reference implementation: ``tf.image.non_max_suppression`` returns
    a variable-length result; here the result is padded to ``K`` with ``-1`` plus a count.
    """
    return _greedy_nms(boxes, scores, None, max_output_size, iou_threshold, score_threshold)


def class_aware_non_max_suppression(boxes, scores, classes, max_output_size, iou_threshold=0.5,
                                    score_threshold=float("-inf")):
    """Greedy NMS where a box only suppresses boxes of its own class.

    Equal to running ``non_max_suppression`` per class and merging the survivors by score
    (what Detectron2's ``batched_nms`` and torchvision's ``batched_nms`` compute), in one
    tiled pass.

    Args:
        boxes: ``[N, 4]`` or ``[B, N, 4]`` ``xyxy`` boxes.
        scores: ``[N]`` or ``[B, N]``.
        classes: integer ``[N]`` or ``[B, N]`` (``[N]`` is shared by every image).
        max_output_size: static number of output slots ``K``.
        iou_threshold: IoU above which a box of the same class is removed (default 0.5).
        score_threshold: only ``score > score_threshold`` is kept (default ``-inf``).

    Returns:
        ``(indices, num_valid)`` as ``non_max_suppression``.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.ops import class_aware_non_max_suppression
    >>> same = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], "float32")
    >>> indices, _ = class_aware_non_max_suppression(same, np.array([0.9, 0.8], "float32"), [0, 1], 2)
    >>> [int(i) for i in indices]
    [0, 1]

    Differences from the reference implementation: classes are compared inside the IoU
    blocks instead of offsetting each class's coordinates (Detectron2), which is exact in
    float32.
    """
    if classes is None:
        raise ValueError("`classes` must be an integer tensor of class ids, got None.")
    return _greedy_nms(boxes, scores, classes, max_output_size, iou_threshold, score_threshold)
