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


def _boxes(x, name):
    """``x`` as float32 after a static check that it is ``[..., 4]`` (``name`` in the error)."""
    x = _float32(x)
    if len(x.shape) < 1 or x.shape[-1] != 4:
        raise ValueError(f"`{name}` must be [..., 4] xyxy boxes, got shape {tuple(x.shape)}.")
    return x


def _same_count(a, b, name_a, name_b):
    """Static check that ``a [..., N, 4]`` and ``b [..., N, 4]`` hold the same number of boxes."""
    n_a, n_b = (t.shape[-2] if len(t.shape) > 1 else None for t in (a, b))
    if n_a is not None and n_b is not None and n_a != n_b:
        raise ValueError(f"`{name_a}` and `{name_b}` must hold the same number of boxes N, got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}.")


def box_area(boxes):
    """Area of ``xyxy`` boxes: ``max(x2 − x1, 0) · max(y2 − y1, 0)``.

    Args:
        boxes: ``[..., 4]`` ``xyxy`` boxes (any float dtype; computed in float32).

    Returns: float32 ``[...]``; inverted boxes have area 0.

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.ops import box_area
    >>> boxes = np.array([[0, 0, 4, 3], [5, 5, 2, 2]], "float32")
    >>> keras.ops.convert_to_numpy(box_area(boxes)).tolist()
    [12.0, 0.0]
    """
    boxes = _float32(boxes)
    width = ops.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    height = ops.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return width * height


def _pairwise_parts(boxes1, boxes2):
    """Intersection, union and enclosing-box area, each ``[..., N, M]``."""
    boxes1, boxes2 = _boxes(boxes1, "boxes1"), _boxes(boxes2, "boxes2")
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
    """IoU of every pair of boxes: ``|a ∩ b| / |a ∪ b|``.

    The overlap criterion of every matcher and NMS in the package (e.g. SSD,
    https://arxiv.org/abs/1512.02325, Sec. 2.2; Faster R-CNN, https://arxiv.org/abs/1506.01497,
    Sec. 3.1.2). Pairs with an empty union get IoU 0; unlike
    ``keras.utils.bounding_boxes.compute_iou`` no epsilon is added to the union, so the values
    equal ``tf.image.non_max_suppression``'s.

    Args:
        boxes1: ``[..., N, 4]`` ``xyxy`` boxes.
        boxes2: ``[..., M, 4]`` ``xyxy`` boxes; leading dimensions broadcast.

    Returns: float32 ``[..., N, M]``.

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.ops import pairwise_iou
    >>> a = np.array([[0, 0, 2, 2]], "float32")
    >>> b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]], "float32")
    >>> print(np.round(keras.ops.convert_to_numpy(pairwise_iou(a, b)), 4))
    [[0.1429 1.     0.    ]]
    """
    intersection, union, _ = _pairwise_parts(boxes1, boxes2)
    return _safe_ratio(intersection, union)


def pairwise_giou(boxes1, boxes2):
    """Generalized IoU of every pair, in ``[-1, 1]``: ``GIoU = IoU − (|C| − |a ∪ b|) / |C|``.

    Paper: "Generalized Intersection over Union", H. Rezatofighi et al., CVPR 2019,
    https://arxiv.org/abs/1902.09630; ``C`` is the smallest box enclosing both
    (``GIoU = IoU`` where ``|C| = 0``).

    Args:
        boxes1: ``[..., N, 4]`` ``xyxy`` boxes.
        boxes2: ``[..., M, 4]`` ``xyxy`` boxes; leading dimensions broadcast.

    Returns: float32 ``[..., N, M]``.

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.ops import pairwise_giou
    >>> a = np.array([[0, 0, 1, 1]], "float32")
    >>> b = np.array([[2, 0, 3, 1], [0, 0, 1, 1]], "float32")   # disjoint: C = 3, union = 2
    >>> print(np.round(keras.ops.convert_to_numpy(pairwise_giou(a, b)), 4))
    [[-0.3333  1.    ]]
    """
    intersection, union, hull = _pairwise_parts(boxes1, boxes2)
    return _safe_ratio(intersection, union) - _safe_ratio(hull - union, hull)


def aligned_iou(boxes1, boxes2):
    """IoU of corresponding boxes (element-wise, not every pair): ``|a ∩ b| / |a ∪ b|``.

    What a loss compares a predicted box with its own target box with, e.g. TSD's progressive
    constraint on localization (Song, Liu, Wang, "Revisiting the Sibling Head in Object
    Detector", CVPR 2020, https://arxiv.org/abs/2003.07540, eq. 8). Widths are ``x2 − x1`` (the
    package's convention; mmdet v1, the TSD reference code, adds "+1" to widths and heights and
    clamps the union at 1 instead). Pairs with a non-positive union get IoU 0. Differentiable
    (the gradient of a zero-union pair is 0, never NaN).

    Args:
        boxes1: ``[..., 4]`` ``xyxy`` boxes.
        boxes2: ``[..., 4]`` ``xyxy`` boxes; leading dimensions broadcast with ``boxes1``'s.

    Returns: float32 ``[...]``.

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.ops.boxes import aligned_iou
    >>> a = np.array([[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 1, 1]], "float32")
    >>> b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [1, 0, 2, 1]], "float32")   # overlap, same, touching
    >>> print(np.round(keras.ops.convert_to_numpy(aligned_iou(a, b)), 4))
    [0.1429 1.     0.    ]
    """
    boxes1, boxes2 = _boxes(boxes1, "boxes1"), _boxes(boxes2, "boxes2")
    inter_w = ops.minimum(boxes1[..., 2], boxes2[..., 2]) - ops.maximum(boxes1[..., 0], boxes2[..., 0])
    inter_h = ops.minimum(boxes1[..., 3], boxes2[..., 3]) - ops.maximum(boxes1[..., 1], boxes2[..., 1])
    intersection = ops.maximum(inter_w, 0.0) * ops.maximum(inter_h, 0.0)
    return _safe_ratio(intersection, box_area(boxes1) + box_area(boxes2) - intersection)


def clip_boxes(boxes, image_size):
    """Clips ``xyxy`` boxes to the image ``[0, width] × [0, height]``.

    Args:
        boxes: ``[..., 4]`` ``xyxy`` boxes in pixels.
        image_size: ``(height, width)`` in pixels.

    Returns: float32 ``[..., 4]``.

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.ops import clip_boxes
    >>> boxes = np.array([[-5, 10, 120, 90]], "float32")
    >>> keras.ops.convert_to_numpy(clip_boxes(boxes, (80, 100))).tolist()
    [[0.0, 10.0, 100.0, 80.0]]
    """
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
    """Box deltas ``(t_x, t_y, t_w, t_h)`` of ``boxes`` relative to ``anchors``.

    Faster R-CNN's parameterization (https://arxiv.org/abs/1506.01497, Eq. 2), SSD's with its
    variances as weights (https://arxiv.org/abs/1512.02325, Eq. 2)::

        t_x = w_x (g_cx − p_cx) / p_w,   t_y = w_y (g_cy − p_cy) / p_h
        t_w = w_w log(g_w / p_w),        t_h = w_h log(g_h / p_h)

    Args:
        boxes: ``[..., N, 4]`` ``xyxy`` ground-truth boxes ``g``.
        anchors: ``[N, 4]`` ``xyxy`` anchors ``p`` (or with the leading dimensions of
            ``boxes``).
        weights: ``(w_x, w_y, w_w, w_h)`` (default ``(1, 1, 1, 1)``, the RPN's;
            ``BOX_CODER_WEIGHTS = (10, 10, 5, 5)`` are SSD's variances 0.1/0.2 and the R-CNN
            box head's weights).

    Returns: float32 ``[..., N, 4]``.

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.ops import encode_boxes
    >>> anchors = np.array([[0, 0, 10, 10]], "float32")
    >>> boxes = np.array([[1, 2, 11, 22]], "float32")           # centre (6, 12), size (10, 20)
    >>> deltas = encode_boxes(boxes, anchors, weights=(10, 10, 5, 5))
    >>> print(np.round(keras.ops.convert_to_numpy(deltas), 4))   # 5 log 2 = 3.4657
    [[1.     7.     0.     3.4657]]
    """
    variance = [1.0 / w for w in _weights(weights)]
    boxes, anchors = _boxes(boxes, "boxes"), _boxes(anchors, "anchors")
    _same_count(boxes, anchors, "boxes", "anchors")
    return bounding_boxes.encode_box_to_deltas(
        anchors, boxes, "xyxy", "xyxy", encoding_format="center_xywh", variance=variance
    )


def decode_boxes(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0), delta_clip=DELTA_CLIP):
    """Inverse of ``encode_boxes``: boxes from deltas ``(t_x, t_y, t_w, t_h)`` and anchors.

    Faster R-CNN's parameterization (https://arxiv.org/abs/1506.01497, Eq. 2) solved for the
    box; ``t_w / w_w`` and ``t_h / w_h`` are clamped at ``delta_clip`` before ``exp``, as
    Detectron2 and mmdet do, so a diverging regressor cannot overflow.

    Args:
        deltas: ``[..., N, 4]``.
        anchors: ``[N, 4]`` ``xyxy`` anchors (or with the leading dimensions of ``deltas``).
        weights: ``(w_x, w_y, w_w, w_h)`` used to encode (default ``(1, 1, 1, 1)``).
        delta_clip: largest scaled ``t_w``/``t_h`` (default ``log(1000 / 16)``).

    Returns: float32 ``xyxy`` boxes ``[..., N, 4]``.

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.ops import decode_boxes
    >>> anchors = np.array([[0, 0, 10, 10]], "float32")
    >>> deltas = np.array([[1.0, 7.0, 0.0, 5 * np.log(2.0)]], "float32")
    >>> print(np.round(keras.ops.convert_to_numpy(decode_boxes(deltas, anchors, (10, 10, 5, 5))), 4))
    [[ 1.  2. 11. 22.]]
    """
    deltas, anchors = _boxes(deltas, "deltas"), _boxes(anchors, "anchors")
    _same_count(deltas, anchors, "deltas", "anchors")
    scaled = deltas / ops.convert_to_tensor(_weights(weights), "float32")
    scaled = ops.concatenate([scaled[..., :2], ops.minimum(scaled[..., 2:], float(delta_clip))], axis=-1)
    return bounding_boxes.decode_deltas_to_boxes(anchors, scaled, "xyxy", "xyxy", encoded_format="center_xywh")
