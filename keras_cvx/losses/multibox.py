"""SSD MultiBox loss with hard negative mining, static shapes.

Paper: "SSD: Single Shot MultiBox Detector", W. Liu et al., arXiv 1512.02325 (Sec. 2.2,
Eq. 1-3, "Hard negative mining"), the loss of NETNet ("Neighbor Erasing and Transferring
Network for Better Single Shot Object Detection", Y. Li et al., CVPR 2020, arXiv 2001.06690,
Sec. 3.5).

For image i with anchors j = 1..N, class target c_ij (0 background, 1..K−1 objects, −1 ignore),
encoded box target t_ij (SSD variances already applied) and predictions (l_ij, z_ij):

    L_loc,i  = Σ_{j ∈ Pos_i} Σ_{d=1..4} smoothL1_{β=1}(l_ijd − t_ijd)
    ce_ij    = logsumexp(z_ij) − z_ij[c_ij]
    Neg_i    = the min(⌊r·|Pos_i|⌋, N − 1) anchors with c_ij = 0 of largest background loss
               −log softmax(z_ij)_0 (r = ``negative_positive_ratio`` = 3)
    L_conf,i = Σ_{j ∈ Pos_i ∪ Neg_i} ce_ij
    L        = Σ_i (L_conf,i + α·L_loc,i) / max(N_pos, 1),    N_pos = Σ_i |Pos_i|

``call`` returns the per-image terms ``(L_conf,i + α·L_loc,i) / max(N_pos, 1)`` (shape [B]) so
that the ``"sum"`` reduction gives L (and ``sample_weight`` weighs images). With no positive
in the batch L = 0 (Caffe's behaviour; amdegroot/ssd.pytorch divides by zero) with finite
(zero) gradients.

N_pos under ``tf.distribute`` (``keras_cvx.losses.replicas``): when ``y_true`` holds
``"loss_normalizers": {"num_positives": n}`` (the positives of the global batch, summed over the
replicas by ``keras_cvx.training.Trainer``), N_pos = n and the replicas' losses sum to the loss
of one process on the global batch; otherwise N_pos is the replica's own count and the result
is divided by the replica count (the mean of the replicas' normalised losses).

Hard negative mining uses static shapes only: the candidates' background losses (−inf for
positives and ignored anchors) are ranked per image with two argsorts (rank of every anchor),
and ``rank < num_neg_i`` selects the negatives (as ssd.pytorch's ``loss_idx.sort`` trick, no
data-dependent gather). Ignored anchors are never mined. The ranking does not carry gradients.
Ties between equal background losses are broken by the sort's order (measure-zero for real
logits).

Why ``reduction="sum"``: the per-image terms are already normalised. Keras's default
``"sum_over_batch_size"`` would divide again by B (and by the replica count under
``tf.distribute``).

Inputs: ``y_true = {"box_targets": [B, N, 4], "class_targets": [B, N] int}`` (optionally
``"loss_normalizers"``, above),
``y_pred = {"box_regression": [B, N, 4], "class_logits": [B, N, K]}``. Packed tensors are accepted
too (for a single-output model): ``y_true`` [B, N, 5] = box targets then the class target (as a
float), ``y_pred`` [B, N, 4 + K] = box deltas then logits. Everything is computed in float32
whatever the dtype policy.
"""

import keras
from keras import ops

from keras_cvx.losses.replicas import normalized_sum
from keras_cvx.validation import require_positive


def _unpack(y_true, y_pred):
    if isinstance(y_true, dict):
        box_targets, class_targets = y_true["box_targets"], y_true["class_targets"]
    else:
        box_targets, class_targets = y_true[..., :4], y_true[..., 4]
    if isinstance(y_pred, dict):
        box_regression, class_logits = y_pred["box_regression"], y_pred["class_logits"]
    else:
        box_regression, class_logits = y_pred[..., :4], y_pred[..., 4:]
    return (
        ops.cast(box_targets, "float32"),
        ops.cast(ops.round(ops.cast(class_targets, "float32")), "int32"),
        ops.cast(box_regression, "float32"),
        ops.cast(class_logits, "float32"),
    )


def smooth_l1(difference, beta=1.0):
    """Smooth-L1 of Fast R-CNN (arXiv 1504.08083, eq. 3) with mmdet's ``beta`` (default 1):
    ``0.5 d² / β`` where ``|d| < β``, else ``|d| − 0.5 β``."""
    absolute = ops.abs(difference)
    return ops.where(absolute < beta, 0.5 * ops.square(difference) / beta, absolute - 0.5 * beta)


def hard_negative_mask(background_loss, candidates, num_negatives):
    """Boolean [B, N]: per row the ``num_negatives[b]`` candidates of largest ``background_loss``.

    ``candidates`` boolean [B, N]; ``num_negatives`` int [B]. Static shapes (rank by argsort).
    """
    scores = ops.where(candidates, ops.stop_gradient(background_loss), float("-inf"))
    order = ops.argsort(-scores, axis=-1)
    rank = ops.argsort(order, axis=-1)
    return candidates & (rank < num_negatives[:, None])


@keras.saving.register_keras_serializable(package="keras_cvx")
class MultiBoxLoss(keras.losses.Loss):
    """SSD MultiBox loss: smooth-L1 on positives + softmax CE on positives and mined negatives.

    Paper: "SSD: Single Shot MultiBox Detector", W. Liu et al., https://arxiv.org/abs/1512.02325,
    Sec. 2.2, Eq. 1-3 and "Hard negative mining"; the loss of NETNet
    (https://arxiv.org/abs/2001.06690, Sec. 3.5)::

        L = Σ_i (L_conf,i + α L_loc,i) / max(N_pos, 1)

    with the ``r · |Pos_i|`` negatives of largest background loss per image (module docstring:
    static-shape mining, the cross-replica normaliser, the packed-tensor form).

    Args:
        negative_positive_ratio: r, mined negatives per positive (default 3, SSD's).
        localization_weight: α (default 1, SSD's).
        reduction: keep ``"sum"`` (the per-image terms are already normalised).
        name: of the loss.

    Inputs: ``y_true = {"box_targets": [B, N, 4], "class_targets": [B, N] int}`` (0 background,
    1..K−1 objects, −1 ignored), ``y_pred = {"box_regression": [B, N, 4], "class_logits":
    [B, N, K]}`` -> float32 scalar.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.losses import MultiBoxLoss
    >>> y_true = {"box_targets": np.zeros((1, 5, 4), "float32"),
    ...           "class_targets": np.array([[1, 0, 0, 0, 0]])}           # one positive
    >>> logits = np.array([[[0, 0], [0, 0], [0, 2], [0, -2], [0, 1]]], "float32")
    >>> regression = np.zeros((1, 5, 4), "float32")
    >>> regression[0, 0, 0] = 0.5                                           # smooth-L1: 0.125
    >>> y_pred = {"box_regression": regression, "class_logits": logits}
    >>> round(float(MultiBoxLoss()(y_true, y_pred)), 4)   # ln 2 + 3 mined negatives + 0.125
    4.9515
    """

    def __init__(self, negative_positive_ratio=3.0, localization_weight=1.0, reduction="sum", name="multibox_loss"):
        super().__init__(name=name, reduction=reduction, dtype="float32")
        self.negative_positive_ratio = require_positive("negative_positive_ratio", negative_positive_ratio)
        if isinstance(localization_weight, bool) or not isinstance(localization_weight, (int, float)) or localization_weight < 0:
            raise ValueError(f"`localization_weight` must be a number >= 0, got {localization_weight!r}.")
        self.localization_weight = float(localization_weight)

    def call(self, y_true, y_pred):
        box_targets, class_targets, box_regression, class_logits = _unpack(y_true, y_pred)
        num_anchors = class_logits.shape[1]
        positives = class_targets > 0
        log_normalizer = ops.logsumexp(class_logits, axis=-1)
        label_logit = ops.take_along_axis(class_logits, ops.maximum(class_targets, 0)[..., None], axis=-1)[..., 0]
        cross_entropy = log_normalizer - label_logit

        num_positives = ops.sum(ops.cast(positives, "int32"), axis=-1)
        num_negatives = ops.minimum(
            ops.cast(ops.floor(self.negative_positive_ratio * ops.cast(num_positives, "float32")), "int32"),
            num_anchors - 1,
        )
        background_loss = log_normalizer - class_logits[..., 0]
        negatives = hard_negative_mask(background_loss, class_targets == 0, num_negatives)

        confidence = ops.sum(ops.where(positives | negatives, cross_entropy, 0.0), axis=-1)
        # Masked before smooth-L1: non-finite targets of non-positives give no NaN gradient.
        difference = ops.where(positives[..., None], box_regression - box_targets, 0.0)
        localization = ops.sum(smooth_l1(difference), axis=(1, 2))
        per_image = confidence + self.localization_weight * localization
        return normalized_sum(per_image, ops.sum(num_positives), y_true)

    def get_config(self):
        return {
            "negative_positive_ratio": self.negative_positive_ratio,
            "localization_weight": self.localization_weight,
            "reduction": self.reduction,
            "name": self.name,
        }
