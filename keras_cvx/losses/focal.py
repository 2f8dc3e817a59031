"""Sigmoid focal loss computed from logits, the classification loss of FCOS and CondInst.

Paper: "Focal Loss for Dense Object Detection", T.-Y. Lin, P. Goyal, R. Girshick, K. He,
P. Dollár, ICCV 2017, arXiv 1708.02002, eq. 5 (the α-balanced form); used by FCOS
(arXiv 1904.01355) and CondInst (arXiv 2003.05664) with α = 0.25, γ = 2::

    p = sigmoid(x),  p_t = p y + (1 - p)(1 - y),  α_t = α y + (1 - α)(1 - y)
    FL(x, y) = α_t (1 - p_t)^γ BCE(x, y),   BCE(x, y) = max(x, 0) - x y + log(1 + exp(-|x|))

element-wise over every location and class (one-hot targets, all zeros for background).

Differences from ``keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True,
from_logits=True)``: the values are the same for logits with ``|x| < ~16``, but Keras applies
the sigmoid first and clips the probability to ``[1e-7, 1 - 1e-7]``, so its loss saturates
at 16.1 and its gradient vanishes for a positive whose logit is below about -16 (and Keras
averages over the last axis). Here the cross-entropy is computed from the logits as
torchvision's and Detectron2's ``sigmoid_focal_loss`` do, and the loss is element-wise.
"""

import keras
from keras import ops

from keras_cvx.validation import require_unit_interval


def sigmoid_focal_loss(y_true, logits, alpha=0.25, gamma=2.0):
    """Element-wise α-balanced sigmoid focal loss (float32, same shape as ``logits``);
    ``alpha=None`` leaves out α_t."""
    logits = ops.cast(logits, "float32")
    y_true = ops.cast(y_true, "float32")
    probability = ops.sigmoid(logits)
    cross_entropy = ops.relu(logits) - logits * y_true + ops.log1p(ops.exp(-ops.abs(logits)))
    p_t = probability * y_true + (1.0 - probability) * (1.0 - y_true)
    loss = ops.power(1.0 - p_t, gamma) * cross_entropy
    if alpha is not None:
        loss = (alpha * y_true + (1.0 - alpha) * (1.0 - y_true)) * loss
    return loss


@keras.saving.register_keras_serializable(package="keras_cvx")
class SigmoidFocalLoss(keras.losses.Loss):
    """α-balanced sigmoid focal loss on logits (arXiv 1708.02002 eq. 5; module docstring).

    Args:
        alpha: weight α of the positives (default 0.25); ``None`` for no balancing.
        gamma: focusing parameter γ (default 2.0).
        reduction: default ``"sum"``: detectors divide the sum by their number of positives
            (``keras_cvx.losses.replicas.normalized_sum``).
        name: of the loss.

    Call: ``loss(y_true, y_pred)`` with 0/1 targets and logits of the same shape -> float32
    scalar (element-wise values reduced by ``reduction``).

    Example:

    >>> import numpy as np
    >>> from keras_cvx.losses import SigmoidFocalLoss
    >>> loss = SigmoidFocalLoss()
    >>> round(float(loss(np.array([[1.0, 0.0]]), np.array([[0.0, 0.0]]))), 4)
    0.1733
    """

    def __init__(self, alpha=0.25, gamma=2.0, reduction="sum", name="sigmoid_focal_loss"):
        super().__init__(name=name, reduction=reduction, dtype="float32")
        self.alpha = None if alpha is None else require_unit_interval("alpha", alpha, include_one=True)
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma < 0:
            raise ValueError(f"`gamma` must be a number >= 0, got {gamma!r}.")
        self.gamma = float(gamma)

    def call(self, y_true, y_pred):
        return sigmoid_focal_loss(y_true, y_pred, self.alpha, self.gamma)

    def get_config(self):
        return {"alpha": self.alpha, "gamma": self.gamma, "reduction": self.reduction, "name": self.name}
