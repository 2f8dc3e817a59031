"""Target assignment of anchors (SSD's priors) and locations to padded ground truth.

Ground truth is padded: ``gt_boxes [B, M, 4]`` (``xyxy`` pixels) and ``gt_labels [B, M]``
with label ``-1`` for padding (unbatched ``[M, 4]``/``[M]`` also accepted); padding is never
matched. Every matcher returns ``(matched_gt, match_state)``, int32 ``[B, N]`` (or ``[N]``):
``matched_gt`` is the ground-truth index of positives and ``-1`` elsewhere; ``match_state``
is 1 positive, 0 negative (background), -1 ignored. ``gather_matches`` turns them into
per-anchor targets. Everything is float32.

* ``argmax_iou_match`` — Faster R-CNN (arXiv 1506.01497 §3.1.2) / Detectron2 ``Matcher``:
  each anchor takes its highest-IoU ground truth; ``IoU >= positive_threshold`` positive,
  ``IoU < negative_threshold`` negative, in between ignored. Low-quality matches: for every
  ground truth, the anchors whose IoU equals its highest IoU become positive (all ties, the
  anchor keeps its own argmax ground truth, as Detectron2). Deviation: a low-quality match also
  needs that highest IoU to be ``> 0`` and ``>= low_quality_min_iou`` (mmdet's ``min_pos_iou``;
  0.3 for mmdet v1's RPN), so a ground truth overlapping no anchor does not make every anchor
  positive.
* ``ssd_match`` — SSD (arXiv 1512.02325 §2.2), the matching NETNet (arXiv 2001.06690) uses: every
  ground truth's best anchor is forced positive with that ground truth (when two ground truths
  pick the same anchor the later index wins, as ssd.pytorch's loop), then every anchor whose best
  IoU is ``>= iou_threshold`` is positive with its best ground truth; the rest are negative.
* ``fcos_match`` — FCOS (arXiv 1904.01355) with center sampling as in CondInst/AdelaiDet
  (arXiv 2003.05664): a location (x, y) of level l (stride s) is a candidate for box g when
  it lies strictly inside the sub-box ``[c - r s, c + r s]`` clipped to g (``c`` the box centre, or
  the mask centre of mass passed as ``gt_centers``; with ``radius=None`` strictly inside g), and
  ``lo_l <= max(l, t, r, b) <= hi_l``. Among candidates the smallest box area wins (first index on
  ties); no candidate means background.
"""

from keras import ops

from keras_cvx.ops.boxes import box_area, pairwise_iou
from keras_cvx.validation import require_positive, require_unit_interval

FCOS_SIZES_OF_INTEREST = (64, 128, 256, 512)
"""Level size-range boundaries of FCOS P3..P7: [-1, 64], [64, 128], ..., [512, 1e8]."""


def _prepare(gt_boxes, gt_labels):
    gt_boxes = ops.cast(ops.convert_to_tensor(gt_boxes), "float32")
    gt_labels = ops.convert_to_tensor(gt_labels)
    unbatched = len(gt_labels.shape) == 1
    if unbatched:
        gt_boxes, gt_labels = gt_boxes[None], gt_labels[None]
    return gt_boxes, gt_labels >= 0, unbatched


def _finish(matched_gt, state, unbatched):
    matched_gt = ops.where(state == 1, ops.cast(matched_gt, "int32"), -1)
    state = ops.cast(state, "int32")
    return (matched_gt[0], state[0]) if unbatched else (matched_gt, state)


def _masked_iou(gt_boxes, valid, anchors):
    iou = pairwise_iou(gt_boxes, ops.cast(anchors, "float32"))  # [B, M, N]
    return ops.where(valid[..., None], iou, -1.0)


def argmax_iou_match(gt_boxes, gt_labels, anchors, positive_threshold=0.7, negative_threshold=0.3,
                     allow_low_quality_matches=True, low_quality_min_iou=0.0):
    """IoU argmax matcher (Faster R-CNN, Detectron2's ``Matcher``) of ``anchors`` to padded ground truth.

    Paper: "Faster R-CNN", S. Ren et al., https://arxiv.org/abs/1506.01497, Sec. 3.1.2: each
    anchor takes its highest-IoU ground truth; ``IoU >= positive_threshold`` positive,
    ``IoU < negative_threshold`` negative, in between ignored; low-quality matches make the
    best anchors of every ground truth positive (module docstring, with our deviation).

    Args:
        gt_boxes: ``[B, M, 4]`` (or ``[M, 4]``) ``xyxy`` ground truth, padded.
        gt_labels: ``[B, M]`` (or ``[M]``) labels, ``-1`` for padding (never matched).
        anchors: ``[N, 4]`` ``xyxy``.
        positive_threshold: default 0.7 (the RPN's).
        negative_threshold: default 0.3 (the RPN's).
        allow_low_quality_matches: default True.
        low_quality_min_iou: smallest IoU of a low-quality match (default 0.0).

    Returns: ``(matched_gt, match_state)``, int32 ``[B, N]`` (or ``[N]``): the ground-truth index
    of positives (``-1`` elsewhere) and 1 positive / 0 negative / -1 ignored.

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.ops import argmax_iou_match
    >>> anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 8], [0, 0, 10, 5], [20, 20, 30, 30]], "float32")
    >>> gt_boxes = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], "float32")
    >>> gt_labels = np.array([3, -1])                      # the second row is padding
    >>> matched, state = argmax_iou_match(gt_boxes, gt_labels, anchors)   # IoU 1, 0.8, 0.5, 0
    >>> keras.ops.convert_to_numpy(matched).tolist(), keras.ops.convert_to_numpy(state).tolist()
    ([0, 0, -1, -1], [1, 1, -1, 0])
    """
    require_unit_interval("positive_threshold", positive_threshold, include_one=True)
    require_unit_interval("negative_threshold", negative_threshold, include_one=True)
    if negative_threshold > positive_threshold:
        raise ValueError(
            f"`negative_threshold` ({negative_threshold}) must not exceed `positive_threshold` ({positive_threshold})."
        )
    gt_boxes, valid, unbatched = _prepare(gt_boxes, gt_labels)
    iou = _masked_iou(gt_boxes, valid, anchors)
    best_iou = ops.max(iou, axis=1)  # [B, N]
    matched = ops.argmax(iou, axis=1)
    state = ops.where(best_iou >= positive_threshold, 1, ops.where(best_iou < negative_threshold, 0, -1))
    if allow_low_quality_matches:
        best_per_gt = ops.max(iou, axis=2, keepdims=True)  # [B, M, 1]
        usable = (best_per_gt > 0.0) & (best_per_gt >= low_quality_min_iou)
        low_quality = ops.any((iou == best_per_gt) & usable, axis=1)
        state = ops.where(low_quality, 1, state)
    return _finish(matched, state, unbatched)


def ssd_match(gt_boxes, gt_labels, anchors, iou_threshold=0.5):
    """SSD's matching of ``anchors`` to padded ground truth (no ignored state).

    Paper: "SSD: Single Shot MultiBox Detector", W. Liu et al., https://arxiv.org/abs/1512.02325,
    Sec. 2.2 ("Matching strategy"), as ssd.pytorch's ``match``: every ground truth's best
    anchor is forced positive, then every anchor whose best IoU is ``>= iou_threshold`` is
    positive with its best ground truth; the rest are negative (module docstring).

    Args:
        gt_boxes: ``[B, M, 4]`` (or ``[M, 4]``) ``xyxy`` ground truth, padded.
        gt_labels: ``[B, M]`` (or ``[M]``) labels, ``-1`` for padding.
        anchors: ``[N, 4]`` ``xyxy``.
        iou_threshold: default 0.5 (SSD's).

    Returns: ``(matched_gt, match_state)``, int32 ``[B, N]`` (or ``[N]``), state 1 or 0.

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.ops import ssd_match
    >>> anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 8], [0, 0, 10, 5], [20, 20, 30, 30]], "float32")
    >>> matched, state = ssd_match(np.array([[0, 0, 10, 10]], "float32"), np.array([3]), anchors)
    >>> keras.ops.convert_to_numpy(matched).tolist(), keras.ops.convert_to_numpy(state).tolist()
    ([0, 0, 0, -1], [1, 1, 1, 0])
    """
    require_unit_interval("iou_threshold", iou_threshold, include_one=True)
    gt_boxes, valid, unbatched = _prepare(gt_boxes, gt_labels)
    iou = _masked_iou(gt_boxes, valid, anchors)
    num_gt, num_anchors = iou.shape[1], iou.shape[2]
    best_iou = ops.max(iou, axis=1)
    best_anchor = ops.argmax(iou, axis=2)  # [B, M]
    forced = (ops.expand_dims(best_anchor, -1) == ops.arange(num_anchors)) & valid[..., None]  # [B, M, N]
    gt_ids = ops.reshape(ops.arange(num_gt, dtype="int32"), (1, num_gt, 1))
    forced_gt = ops.max(ops.where(forced, gt_ids, -1), axis=1)
    matched = ops.where(forced_gt >= 0, forced_gt, ops.cast(ops.argmax(iou, axis=1), "int32"))
    state = ops.where((forced_gt >= 0) | (best_iou >= iou_threshold), 1, 0)
    return _finish(matched, state, unbatched)


def fcos_match(gt_boxes, gt_labels, locations, levels, strides=(8, 16, 32, 64, 128),
               sizes_of_interest=FCOS_SIZES_OF_INTEREST, radius=1.5, gt_centers=None):
    """FCOS assignment of locations to padded ground truth, with center sampling.

    Papers: "FCOS: Fully Convolutional One-Stage Object Detection", Z. Tian et al.,
    https://arxiv.org/abs/1904.01355 (a location is a candidate for a box it lies
    in, on the level whose size range holds its largest distance; the smallest box wins);
    center sampling with ``radius`` as CondInst (https://arxiv.org/abs/2003.05664) and
    AdelaiDet's ``FCOSOutputs`` (module docstring).

    Args:
        gt_boxes: ``[B, M, 4]`` (or ``[M, 4]``) ``xyxy`` ground truth, padded.
        gt_labels: ``[B, M]`` (or ``[M]``) labels, ``-1`` for padding.
        locations: ``[N, 2]`` ``(x, y)`` points (from ``fcos_locations``).
        levels: ``[N]`` level index of each point.
        strides: per-level strides (default ``(8, 16, 32, 64, 128)``).
        sizes_of_interest: the ``len(strides) − 1`` boundaries of the levels' size ranges
            (default ``(64, 128, 256, 512)``).
        radius: center-sampling radius in strides (default 1.5; None: anywhere in the box).
        gt_centers: optional ``[B, M, 2]`` ``(x, y)`` sampling centres (CondInst: the masks'
            centres of mass) instead of the box centres.

    Returns: ``(matched_gt, match_state)``, int32 ``[B, N]`` (or ``[N]``), state 1 or 0.

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.ops import fcos_locations, fcos_match
    >>> locations, levels = fcos_locations((32, 32), strides=(8, 16))
    >>> matched, state = fcos_match(np.array([[0, 0, 16, 16]], "float32"), np.array([0]),
    ...                             locations, levels, strides=(8, 16), sizes_of_interest=(64,))
    >>> np.flatnonzero(keras.ops.convert_to_numpy(state)).tolist()   # 4 points of stride 8
    [0, 1, 4, 5]
    """
    if len(sizes_of_interest) != len(strides) - 1:
        raise ValueError(
            f"`sizes_of_interest` needs len(strides) - 1 = {len(strides) - 1} boundaries, got {sizes_of_interest!r}."
        )
    if radius is not None:
        radius = require_positive("radius", radius)
    gt_boxes, valid, unbatched = _prepare(gt_boxes, gt_labels)
    locations = ops.cast(locations, "float32")
    levels = ops.cast(levels, "int32")
    x, y = locations[:, 0], locations[:, 1]  # [N]
    x0, y0, x1, y1 = (gt_boxes[..., k : k + 1] for k in range(4))  # [B, M, 1]
    distances = ops.stack([x - x0, y - y0, x1 - x, y1 - y], axis=-1)  # [B, M, N, 4]
    if radius is None:
        inside = ops.min(distances, axis=-1) > 0.0
    else:
        if gt_centers is None:
            cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        else:
            gt_centers = ops.cast(gt_centers, "float32")
            gt_centers = gt_centers[None] if unbatched else gt_centers
            cx, cy = gt_centers[..., 0:1], gt_centers[..., 1:2]
        reach = radius * ops.take(ops.convert_to_tensor([float(s) for s in strides]), levels)  # [N]
        sub = [ops.maximum(cx - reach, x0), ops.maximum(cy - reach, y0),
               ops.minimum(cx + reach, x1), ops.minimum(cy + reach, y1)]
        inside = ops.min(ops.stack([x - sub[0], y - sub[1], sub[2] - x, sub[3] - y], -1), axis=-1) > 0.0
    bounds = [-1.0] + [float(s) for s in sizes_of_interest] + [1e8]
    low = ops.take(ops.convert_to_tensor(bounds[:-1]), levels)
    high = ops.take(ops.convert_to_tensor(bounds[1:]), levels)
    extent = ops.max(distances, axis=-1)
    candidate = inside & (extent >= low) & (extent <= high) & valid[..., None]
    cost = ops.where(candidate, ops.expand_dims(box_area(gt_boxes), -1), float("inf"))
    matched = ops.argmin(cost, axis=1)
    state = ops.where(ops.any(candidate, axis=1), 1, 0)
    return _finish(matched, state, unbatched)


def gather_matches(values, matched_gt, fill_value=0):
    """Per-anchor targets: ``values`` gathered at ``matched_gt``, ``fill_value`` where it is ``< 0``.

    Args:
        values: ``[B, M, ...]`` per-ground-truth values (boxes, labels, ...), or ``[M, ...]``.
        matched_gt: ``[B, N]`` (or ``[N]``) indices from a matcher, ``-1`` for unmatched.
        fill_value: value of unmatched anchors (default 0).

    Returns: ``[B, N, ...]`` (or ``[N, ...]``), ``values``'s dtype.

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.ops import gather_matches
    >>> labels = np.array([3, 7])
    >>> keras.ops.convert_to_numpy(gather_matches(labels, np.array([1, -1, 0]))).tolist()
    [7, 0, 3]
    """
    values = ops.convert_to_tensor(values)
    matched_gt = ops.convert_to_tensor(matched_gt)
    if len(matched_gt.shape) == 1:
        return gather_matches(values[None], matched_gt[None], fill_value)[0]
    index, keep = ops.maximum(matched_gt, 0), matched_gt >= 0
    for _ in range(len(values.shape) - 2):
        index, keep = ops.expand_dims(index, -1), ops.expand_dims(keep, -1)
    # Broadcast by adding zeros rather than by a static shape: the batch size may be unknown.
    index = index + ops.zeros_like(values[:, :1], dtype=index.dtype)
    gathered = ops.take_along_axis(values, index, axis=1)
    return ops.where(keep, gathered, ops.cast(fill_value, values.dtype))
