"""Dice loss for instance masks, as CondInst trains its dynamic mask heads.

Paper: "Conditional Convolutions for Instance Segmentation", Z. Tian, C. Shen, H. Chen,
ECCV 2020, arXiv 2003.05664, Sec. 3.3 (the dice loss of V-Net, "V-Net: Fully Convolutional
Neural Networks for Volumetric Medical Image Segmentation", arXiv 1606.04797, eq. 1), as
AdelaiDet's ``dice_coefficient``: for one instance with mask probabilities ``p`` and binary
target ``g`` over all pixels::

    L_dice = 1 - 2 Σ p g / (Σ p² + Σ g² + ε),   ε = 1e-5

The sums run over ``axis`` (default the last two: ``[..., H, W]`` masks), so there is one
value per instance; the reduction (default the mean over instances) combines them.
"""

import keras
from keras import ops

from keras_cvx.validation import require_positive


def dice_loss(y_true, y_pred, from_logits=False, epsilon=1e-5, axis=(-2, -1)):
    """Per-instance dice loss (float32, ``y_pred``'s shape without ``axis``)."""
    y_pred = ops.cast(y_pred, "float32")
    if from_logits:
        y_pred = ops.sigmoid(y_pred)
    y_true = ops.cast(y_true, "float32")
    intersection = ops.sum(y_pred * y_true, axis=axis)
    denominator = ops.sum(ops.square(y_pred), axis=axis) + ops.sum(ops.square(y_true), axis=axis) + epsilon
    return 1.0 - 2.0 * intersection / denominator


@keras.saving.register_keras_serializable(package="keras_cvx")
class DiceLoss(keras.losses.Loss):
    """CondInst's dice loss per instance mask (module docstring).

    Args:
        from_logits: ``y_pred`` are logits (a sigmoid is applied) instead of probabilities
            (default False, as AdelaiDet passes probabilities).
        epsilon: ε in the denominator (default 1e-5).
        axis: the pixel axes summed over (default ``(-2, -1)``).
        reduction: default ``"sum_over_batch_size"``: the mean over instances.
        name: of the loss.

    Call: ``loss(y_true [..., H, W], y_pred [..., H, W])`` -> float32 scalar.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.losses import DiceLoss
    >>> mask = np.array([[[1.0, 0.0], [0.0, 0.0]]])
    >>> round(float(DiceLoss()(mask, mask)), 4)
    0.0
    """

    def __init__(self, from_logits=False, epsilon=1e-5, axis=(-2, -1), reduction="sum_over_batch_size",
                 name="dice_loss"):
        super().__init__(name=name, reduction=reduction, dtype="float32")
        self.from_logits = bool(from_logits)
        self.epsilon = require_positive("epsilon", epsilon)
        self.axis = tuple(int(a) for a in (axis if isinstance(axis, (list, tuple)) else (axis,)))

    def call(self, y_true, y_pred):
        return dice_loss(y_true, y_pred, self.from_logits, self.epsilon, self.axis)

    def get_config(self):
        return {"from_logits": self.from_logits, "epsilon": self.epsilon, "axis": list(self.axis),
                "reduction": self.reduction, "name": self.name}
