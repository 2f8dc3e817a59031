"""Box utilities on ``xyxy`` boxes in absolute pixels.

Used by every detector of the package: SSD/NETNet (arXiv 2001.06690), Faster R-CNN with
TSD (arXiv 2003.07540), FCOS/CondInst (arXiv 2003.05664).

* area: ``A = max(x2 - x1, 0) * max(y2 - y1, 0)``;
* pairwise IoU: ``IoU(a, b) = |a ∩ b| / |a ∪ b|`` (0 where the union is empty);
* pairwise GIoU (Rezatofighi et al., arXiv 1902.09630): ``GIoU = IoU - (|C| - |a ∪ b|) / |C|``
  with ``C`` the smallest enclosing box (``GIoU = IoU`` where ``|C| = 0``);
* delta coding relative to anchors/proposals (Faster R-CNN eq. 2, SSD eq. 2) with
  per-coordinate weights ``(w_x, w_y, w_w, w_h)``::

      t_x = w_x (g_cx - p_cx) / p_w     t_y = w_y (g_cy - p_cy) / p_h
      t_w = w_w log(g_w / p_w)         t_h = w_h log(g_h / p_h)

  SSD's variances (0.1, 0.1, 0.2, 0.2) are the weights (10, 10, 5, 5), which are also the
  R-CNN box-head weights: ``BOX_CODER_WEIGHTS``. The RPN uses weights (1, 1, 1, 1).

Everything is computed in float32 whatever the input dtype (pixel areas overflow float16).
Widths are ``x2 - x1`` (no "+1" of mmdet v1 / Detectron); SSD's normalised coordinates scaled
by the image size give the same deltas, so the coding is the same in pixels.
Encoding reuses ``keras.utils.bounding_boxes.encode_box_to_deltas`` (exact: it clamps widths
to ``keras.backend.epsilon()`` so zero-area boxes do not produce ``log 0``). Decoding clamps
``t_w, t_h`` (after dividing by the weights) at ``log(1000 / 16)`` as Detectron2 and mmdet do,
then reuses ``keras.utils.bounding_boxes.decode_deltas_to_boxes``; Keras's own decoder has no
clamp and overflows ``exp`` on a diverging regressor. IoU is written here instead of reusing
``keras.utils.bounding_boxes.compute_iou`` because that one adds ``epsilon`` to the union (so
it differs from ``tf.image.non_max_suppression``'s IoU) and GIoU needs the union anyway.
"""

import math

from keras import ops
from keras.utils import bounding_boxes

BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
"""SSD variances 0.1/0.2 and the R-CNN box-head weights, as coding weights."""

DELTA_CLIP = math.log(1000.0 / 16.0)
"""Largest ``t_w``/``t_h`` (after dividing by the weights) accepted by ``decode_boxes``."""


def _float32(x):
    return ops.cast(ops.convert_to_tensor(x), "float32")


def box_area(boxes):
    """Area of ``xyxy`` boxes ``[..., 4]`` -> ``[...]`` (float32; inverted boxes have area 0)."""
    boxes = _float32(boxes)
    width = ops.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    height = ops.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return width * height


def _pairwise_parts(boxes1, boxes2):
    """Intersection, union and enclosing-box area, each ``[..., N, M]``."""
    boxes1, boxes2 = _float32(boxes1), _float32(boxes2)
    a = ops.expand_dims(boxes1, -2)  # [..., N, 1, 4]
    b = ops.expand_dims(boxes2, -3)  # [..., 1, M, 4]
    inter_w = ops.maximum(ops.minimum(a[..., 2], b[..., 2]) - ops.maximum(a[..., 0], b[..., 0]), 0.0)
    inter_h = ops.maximum(ops.minimum(a[..., 3], b[..., 3]) - ops.maximum(a[..., 1], b[..., 1]), 0.0)
    intersection = inter_w * inter_h
    union = ops.expand_dims(box_area(boxes1), -1) + ops.expand_dims(box_area(boxes2), -2) - intersection
    hull_w = ops.maximum(a[..., 2], b[..., 2]) - ops.minimum(a[..., 0], b[..., 0])
    hull_h = ops.maximum(a[..., 3], b[..., 3]) - ops.minimum(a[..., 1], b[..., 1])
    hull = ops.maximum(hull_w, 0.0) * ops.maximum(hull_h, 0.0)
    return intersection, union, hull


def _safe_ratio(numerator, denominator):
    positive = denominator > 0.0
    return ops.where(positive, numerator / ops.where(positive, denominator, 1.0), 0.0)


def pairwise_iou(boxes1, boxes2):
    """IoU of every pair: ``boxes1 [..., N, 4]``, ``boxes2 [..., M, 4]`` -> ``[..., N, M]``.

    Leading dimensions broadcast. Pairs with an empty union get IoU 0.
    """
    intersection, union, _ = _pairwise_parts(boxes1, boxes2)
    return _safe_ratio(intersection, union)


def pairwise_giou(boxes1, boxes2):
    """Generalized IoU of every pair, in ``[-1, 1]``: ``[..., N, 4], [..., M, 4] -> [..., N, M]``."""
    intersection, union, hull = _pairwise_parts(boxes1, boxes2)
    return _safe_ratio(intersection, union) - _safe_ratio(hull - union, hull)


def clip_boxes(boxes, image_size):
    """Clips ``xyxy`` boxes ``[..., 4]`` to ``[0, width] x [0, height]``; ``image_size = (h, w)``."""
    height, width = image_size
    boxes = _float32(boxes)
    x = ops.clip(boxes[..., 0::2], 0.0, float(width))
    y = ops.clip(boxes[..., 1::2], 0.0, float(height))
    return ops.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def _weights(weights):
    if len(weights) != 4 or any(not float(w) > 0 for w in weights):
        raise ValueError(f"`weights` must be 4 positive numbers (wx, wy, ww, wh), got {weights!r}.")
    return [float(w) for w in weights]


def encode_boxes(boxes, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    """Deltas ``(t_x, t_y, t_w, t_h)`` of ``boxes [..., N, 4]`` relative to ``anchors [N, 4]``.

    ``anchors`` may also carry the leading dimensions of ``boxes``. Returns float32 ``[..., N, 4]``.
    """
    variance = [1.0 / w for w in _weights(weights)]
    return bounding_boxes.encode_box_to_deltas(
        _float32(anchors), _float32(boxes), "xyxy", "xyxy", encoding_format="center_xywh", variance=variance
    )


def decode_boxes(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0), delta_clip=DELTA_CLIP):
    """Inverse of ``encode_boxes``: ``deltas [..., N, 4]``, ``anchors [N, 4]`` -> ``xyxy [..., N, 4]``.

    ``t_w / w_w`` and ``t_h / w_h`` are clamped at ``delta_clip`` before ``exp``.
    """
    scaled = _float32(deltas) / ops.convert_to_tensor(_weights(weights), "float32")
    scaled = ops.concatenate([scaled[..., :2], ops.minimum(scaled[..., 2:], float(delta_clip))], axis=-1)
    return bounding_boxes.decode_deltas_to_boxes(
        _float32(anchors), scaled, "xyxy", "xyxy", encoded_format="center_xywh"
    )
