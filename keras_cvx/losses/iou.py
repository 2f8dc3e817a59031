"""IoU and GIoU losses on boxes given as distances ``(l, t, r, b)`` from a location, as
FCOS and CondInst regress them.

Papers: "UnitBox: An Advanced Object Detection Network", J. Yu et al., arXiv 1608.01471
(IoU loss ``-log IoU``); "Generalized Intersection over Union", H. Rezatofighi et al.,
CVPR 2019, arXiv 1902.09630 (eq. GIoU = IoU - |C \\ (A ∪ B)| / |C|, loss ``1 - GIoU``); used by
FCOS (arXiv 1904.01355) and CondInst (arXiv 2003.05664) as AdelaiDet's ``IOULoss``.

Both boxes share the location, so with ``(l, t, r, b)`` (prediction) and ``(l*, t*, r*, b*)``::

    I = (min(l, l*) + min(r, r*)) (min(t, t*) + min(b, b*))
    U = (l + r)(t + b) + (l* + r*)(t* + b*) - I
    C = (max(l, l*) + max(r, r*)) (max(t, t*) + max(b, b*))
    IoU = (I + smooth) / (U + smooth)                       smooth = 1 as AdelaiDet
    "iou":        -log IoU
    "linear_iou": 1 - IoU
    "giou":       1 - (IoU - (C - U) / (C + 1e-7))

The distances are in units of the level's stride in FCOS (so ``smooth = 1`` is one stride²).
With ``smooth=0`` "giou" is ``1 - keras_cvx.ops.boxes.pairwise_giou`` of the two boxes.
"""

import keras
from keras import ops

from keras_cvx.validation import require_choice

LOSS_TYPES = ("giou", "iou", "linear_iou")


def ltrb_iou_loss(y_true, y_pred, loss_type="giou", smooth=1.0):
    """Element-wise loss of ``y_pred`` against ``y_true``, both ``(l, t, r, b)`` ``[..., 4]`` ->
    float32 ``[...]`` (module docstring)."""
    require_choice("loss_type", loss_type, LOSS_TYPES)
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    pl, pt, pr, pb = (y_pred[..., k] for k in range(4))
    tl, tt, tr, tb = (y_true[..., k] for k in range(4))
    intersection = (ops.minimum(pl, tl) + ops.minimum(pr, tr)) * (ops.minimum(pt, tt) + ops.minimum(pb, tb))
    union = (pl + pr) * (pt + pb) + (tl + tr) * (tt + tb) - intersection
    iou = (intersection + smooth) / (union + smooth)
    if loss_type == "iou":
        return -ops.log(iou)
    if loss_type == "linear_iou":
        return 1.0 - iou
    enclosing = (ops.maximum(pl, tl) + ops.maximum(pr, tr)) * (ops.maximum(pt, tt) + ops.maximum(pb, tb)) + 1e-7
    return 1.0 - (iou - (enclosing - union) / enclosing)


@keras.saving.register_keras_serializable(package="keras_cvx")
class IoULoss(keras.losses.Loss):
    """GIoU / IoU loss of ``(l, t, r, b)`` distance boxes (module docstring).

    Args:
        loss_type: ``"giou"`` (default, CondInst), ``"iou"`` (``-log IoU``, FCOS's first
            version) or ``"linear_iou"`` (``1 - IoU``).
        smooth: added to the intersection and the union (default 1.0, as AdelaiDet).
        reduction: default ``"sum"``: FCOS weights each location by its center-ness target
            (``sample_weight``) and divides the sum by the sum of those weights.
        name: of the loss.

    Call: ``loss(y_true [..., 4], y_pred [..., 4], sample_weight=[...])`` -> float32 scalar.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.losses import IoULoss
    >>> loss = IoULoss(smooth=0.0)
    >>> round(float(loss(np.array([[2.0, 2.0, 2.0, 2.0]]), np.array([[2.0, 2.0, 2.0, 2.0]]))), 6)
    0.0
    """

    def __init__(self, loss_type="giou", smooth=1.0, reduction="sum", name="iou_loss"):
        super().__init__(name=name, reduction=reduction, dtype="float32")
        self.loss_type = require_choice("loss_type", loss_type, LOSS_TYPES)
        if isinstance(smooth, bool) or not isinstance(smooth, (int, float)) or smooth < 0:
            raise ValueError(f"`smooth` must be a number >= 0, got {smooth!r}.")
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        return ltrb_iou_loss(y_true, y_pred, self.loss_type, self.smooth)

    def get_config(self):
        return {"loss_type": self.loss_type, "smooth": self.smooth, "reduction": self.reduction, "name": self.name}
