"""Detections of a dense one-stage detector: per-level top-k of the (location, class) scores,
a score threshold, class-aware NMS and the gather of the kept slots.

The inference shared by RetinaNet ("Focal Loss for Dense Object Detection", T.-Y. Lin et al.,
arXiv 1708.02002, Sec. 4.1 "Inference": box predictions decoded from at most the 1k
top-scoring predictions per FPN level after thresholding the confidence at 0.05, the levels
merged, NMS 0.5; Detectron2 ``RetinaNet.inference_single_image``) and FCOS/CondInst ("FCOS",
arXiv 1904.01355, Sec. 3.3; AdelaiDet ``FCOSOutputs.forward_for_single_feature_map``). Both
decoders (``RetinaNetDecoder``, ``FCOSDecoder``) call ``dense_detections`` with their own box
formula and score. Per image::

    per level l (locations [start_l, start_l + n_l)): the pre_nms_top_k (location, class)
        pairs of largest s over the flattened n_l x K scores (one location may give several
        classes; ties: lower flat index first)
    boxes = box_fn(locations of the candidates)
    candidates with s <= score_threshold dropped                (strictly above is kept)
    class-aware greedy NMS (IoU > iou_threshold suppressed), the max_detections best
    score = score_fn(s) (identity by default; FCOS: sqrt)

Taking the top-k first and thresholding after keeps the same candidates as Detectron2's
threshold-then-top-k (the threshold is monotonic in s). Static shapes: every level gives
``min(pre_nms_top_k, n_l K)`` candidates (the dropped ones take no NMS slot) and the output
has exactly ``max_detections`` slots, padded (boxes and scores 0, classes and locations -1).
Computed in float32.
"""

from keras import ops

from keras_cvx.ops.nms import class_aware_non_max_suppression


def level_sizes_of(level_sizes, num_locations):
    """``level_sizes`` as a list of Python ints adding up to ``num_locations`` (``None``: one
    level); ValueError naming ``level_sizes`` otherwise."""
    sizes = [num_locations] if level_sizes is None else [int(s) for s in level_sizes]
    if any(s < 0 for s in sizes) or sum(sizes) != num_locations:
        raise ValueError(f"`level_sizes` {sizes} must be non-negative and add up to the {num_locations} locations.")
    return sizes


def dense_detections(scores, box_fn, level_sizes=None, pre_nms_top_k=1000, score_threshold=0.05, iou_threshold=0.5,
                     max_detections=100, score_fn=None):
    """Per-level top-k, threshold, class-aware NMS and gather of a dense detector's outputs.

    Papers: RetinaNet, "Focal Loss for Dense Object Detection", https://arxiv.org/abs/1708.02002,
    Sec. 4.1 (inference); FCOS, https://arxiv.org/abs/1904.01355, Sec. 3.3 (module docstring).

    Args:
        scores: ``[B, N, K]`` per-location (or per-anchor) class scores ``s`` (probabilities),
            ``N`` and ``K`` static; ``B`` may be unknown.
        box_fn: function of the candidate locations, int32 ``[B, C]`` indices into ``N``, to
            their ``xyxy`` boxes ``[B, C, 4]`` (the decoder's box formula).
        level_sizes: locations of each level, Python ints adding up to ``N`` (default ``None``:
            one level).
        pre_nms_top_k: candidates per level (default 1000).
        score_threshold: keep ``s > score_threshold`` (default 0.05).
        iou_threshold: NMS IoU threshold (default 0.5).
        max_detections: output slots per image (default 100).
        score_fn: maps the kept ``s`` to the output scores (default identity; FCOS ``sqrt``).

    Returns: dict of ``boxes`` float32 ``[B, D, 4]``, ``scores`` float32 ``[B, D]`` (descending),
    ``classes`` int32 ``[B, D]``, ``num_detections`` int32 ``[B]`` and ``locations`` int32
    ``[B, D]`` (the index into ``N`` of each detection), ``D = max_detections``; padding slots
    hold zeros and ``-1``.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> from keras_cvx.layers.dense_detections import dense_detections
    >>> boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], "float32")
    >>> scores = np.array([[[0.9, 0.0], [0.8, 0.7], [0.04, 0.3]]], "float32")   # 3 locations, 2 classes
    >>> out = dense_detections(scores, lambda index: ops.take(boxes, index, axis=0), max_detections=4)
    >>> ops.convert_to_numpy(out["locations"])[0].tolist(), ops.convert_to_numpy(out["classes"])[0].tolist()
    ([0, 1, 2, -1], [0, 1, 1, -1])
    """
    scores = ops.cast(scores, "float32")
    num_locations, num_classes = scores.shape[1], scores.shape[2]
    if num_locations is None or num_classes is None:
        raise ValueError(f"`scores` must be [B, N, K] with static N and K, got shape {tuple(scores.shape)}.")
    top_scores, top_locations, top_classes, start = [], [], [], 0
    for size in level_sizes_of(level_sizes, num_locations):
        if size:
            flat = ops.reshape(scores[:, start : start + size], (-1, size * num_classes))
            values, index = ops.top_k(flat, min(pre_nms_top_k, size * num_classes))
            top_scores.append(values)
            top_locations.append(start + index // num_classes)
            top_classes.append(index % num_classes)
        start += size
    candidate_scores = ops.concatenate(top_scores, axis=1)
    candidate_locations = ops.cast(ops.concatenate(top_locations, axis=1), "int32")
    candidate_classes = ops.cast(ops.concatenate(top_classes, axis=1), "int32")
    boxes = ops.cast(box_fn(candidate_locations), "float32")
    kept_scores = candidate_scores if score_fn is None else ops.cast(score_fn(candidate_scores), "float32")
    # Thresholded candidates get -inf: the NMS (score threshold -inf, strict) never selects them.
    nms_scores = ops.where(candidate_scores > score_threshold, kept_scores, float("-inf"))
    selected, num_detections = class_aware_non_max_suppression(
        boxes, nms_scores, candidate_classes, max_detections, iou_threshold, float("-inf"))
    valid = selected >= 0
    index = ops.maximum(selected, 0)
    out_boxes = ops.take_along_axis(boxes, ops.repeat(index[..., None], 4, axis=-1), axis=1)
    return {
        "boxes": ops.where(valid[..., None], out_boxes, 0.0),
        "scores": ops.where(valid, ops.take_along_axis(nms_scores, index, axis=1), 0.0),
        "classes": ops.where(valid, ops.take_along_axis(candidate_classes, index, axis=1), -1),
        "num_detections": ops.cast(num_detections, "int32"),
        "locations": ops.where(valid, ops.take_along_axis(candidate_locations, index, axis=1), -1),
    }
