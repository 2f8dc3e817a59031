"""Circle Loss, class-level and pair-wise.

Paper: "Circle Loss: A Unified Perspective of Pair Similarity Optimization", Y. Sun, C. Cheng,
Y. Zhang, C. Zhang, L. Zheng, Z. Wang, Y. Wei, CVPR 2020, arXiv 2002.10857.

For one anchor with within-class similarities s_p^i and between-class similarities s_n^j
(paper Eq. 4-6):

    L = log[1 + Σ_j exp(γ α_n^j (s_n^j − Δ_n)) · Σ_i exp(−γ α_p^i (s_p^i − Δ_p))]
      = softplus(LSE_j(γ α_n^j (s_n^j − Δ_n)) + LSE_i(−γ α_p^i (s_p^i − Δ_p)))

    α_p = [1 + m − s_p]_+,   α_n = [s_n + m]_+,   Δ_p = 1 − m,   Δ_n = m

α_p and α_n are constants in back-propagation (stop-gradient, as all reference code does).
The softplus/logsumexp form never overflows (logits reach γ(4 − m²) ≈ 1008 at γ = 256).
Pairs that are not positives (negatives) get the finite logit −1e9 instead of −inf, so rows
without any pair give a loss of exactly 0 with zero, finite gradients under XLA.

* ``CircleLoss`` (class-level labels): ``y_pred`` are cosines s to C class proxies (e.g. from
  ``keras_cvx.layers.CosineDense``), K = 1 positive (the label), L = C − 1 negatives; equal to
  sparse cross-entropy on the margin logits ``Y γ α_p (s − (1 − m)) + (1 − Y) γ α_n (s − m)``
  (Y the one-hot label), as the class-level heads of ``TinyZeaMays/CircleLoss``
  (``CircleLossLikeCE``) and ``JDAI-CV/fast-reid`` (``CircleSoftmax``) compute it.
* ``PairwiseCircleLoss`` (pair-wise labels): ``y_pred`` are embeddings, every ordered pair
  (a, b) of the batch, positives ``y_a == y_b, a != b``, negatives ``y_a != y_b``; one loss per
  anchor, as ``CircleLoss`` of ``KevinMusgrave/pytorch-metric-learning`` (PML). No official
  code was released.

Reduction: the loss is the mean over *valid* rows (pair-wise: at least one positive and one
negative, PML's per-anchor mean; class-level: a label in ``[0, C)``; 0 if there is none).
``call`` returns per-row values, zero for invalid rows and scaled by ``N / #valid`` so that
Keras's default ``"sum_over_batch_size"`` reduction produces that mean (Keras's public API
has no other way for a loss to choose its denominator).

Differences from ``keras.losses.Circle`` (Keras 3.15, pair-wise only):
  * Keras does not normalise the embeddings; ``PairwiseCircleLoss`` L2-normalises them
    (``normalize=False`` gives Keras's behaviour).
  * Keras does not stop the gradient through α, so values agree but gradients differ.
  * Keras clips similarities at 1 (distance ``max(1 − s, 0)``); we do not (they agree for
    unit-norm inputs up to rounding).
  * Keras masks with −inf and averages over rows whose loss is > 0; we mask with −1e9 and
    average over rows with a positive and a negative. The values coincide unless a valid
    row's loss underflows to 0 in float32 (then Keras drops it from the denominator).
  * Keras has no class-level form (``CircleLoss`` here).
All computation is float32, whatever the dtype of ``y_pred``.
"""

import keras
from keras import ops

from keras_cvx.layers.cosine_dense import l2_normalize
from keras_cvx.validation import check_labels, require_positive

MASKED_LOGIT = -1e9


def circle_loss_per_row(similarity, positive_mask, negative_mask, margin, gamma):
    """Circle loss of every row of ``similarity`` [N, M] (float32) given boolean masks [N, M].

    Returns [N]; a row without positives or without negatives gives 0.
    """
    frozen = ops.stop_gradient(similarity)
    alpha_p = ops.relu(1.0 + margin - frozen)
    alpha_n = ops.relu(frozen + margin)
    logit_p = -gamma * alpha_p * (similarity - (1.0 - margin))
    logit_n = gamma * alpha_n * (similarity - margin)
    logit_p = ops.where(positive_mask, logit_p, MASKED_LOGIT)
    logit_n = ops.where(negative_mask, logit_n, MASKED_LOGIT)
    return ops.softplus(ops.logsumexp(logit_p, axis=-1) + ops.logsumexp(logit_n, axis=-1))


def mean_over_valid_rows(losses, valid):
    """Zeroes invalid rows and scales the others by ``N / max(#valid, 1)``, so that Keras's
    ``"sum_over_batch_size"`` reduction (divide by N) yields the mean over valid rows."""
    valid = ops.cast(valid, "float32")
    scale = ops.cast(ops.shape(valid)[0], "float32") / ops.maximum(ops.sum(valid), 1.0)
    return ops.where(valid > 0, losses, 0.0) * scale


class _CircleBase(keras.losses.Loss):
    def __init__(self, margin, gamma, reduction="sum_over_batch_size", name=None, dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin = float(margin)
        if not -1.0 < self.margin < 1.0:
            raise ValueError(f"`margin` must be in (-1, 1), got {margin!r}.")
        self.gamma = require_positive("gamma", gamma)

    def get_config(self):
        config = super().get_config()
        config.update(margin=self.margin, gamma=self.gamma)
        return config


@keras.saving.register_keras_serializable(package="keras_cvx")
class CircleLoss(_CircleBase):
    """Class-level Circle loss (AM-Softmax-like: one positive, the label, per row).

    Paper: "Circle Loss: A Unified Perspective of Pair Similarity Optimization", Y. Sun et al.,
    CVPR 2020, https://arxiv.org/abs/2002.10857 (the Circle loss with self-paced weights
    ``α_p = [1 + m − s_p]_+``, ``α_n = [s_n + m]_+`` and margins ``Δ_p = 1 − m``, ``Δ_n = m``,
    module docstring), with class-level labels: K = 1 positive similarity, the cosine to the
    label's proxy, and C − 1 negatives::

        L_b = softplus(LSE_{j≠y}(γ α_n (s_j − m)) − γ α_p (s_y − (1 − m)))

    mean over rows whose label is in ``[0, C)`` (other labels, e.g. −1, give 0 and are not
    counted). α is not differentiated (stop-gradient), as every reference implementation.

    Args:
        margin: relaxation ``m`` (default 0.25, the paper's face-recognition setting).
        gamma: scale ``γ`` (default 256, the paper's face-recognition setting).
        reduction, name, dtype: as ``keras.losses.Loss`` (keep the default reduction: ``call``
            already scales the rows so that it yields the mean over valid rows).

    Shapes: ``y_true`` integer labels [B] (or [B, 1]) in ``0..C-1``, ``-1`` for a padding row
    (ignored; other values raise a ``ValueError`` in eager mode), ``y_pred`` cosines [B, C] in
    [−1, 1] (e.g. from ``keras_cvx.layers.CosineDense``) -> float32 scalar.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.losses import CircleLoss
    >>> cosines = np.array([[0.9, 0.1, -0.2], [0.2, 0.3, 0.8]], "float32")
    >>> loss = CircleLoss()
    >>> round(float(loss(np.array([0, -1]), cosines)), 4)   # row 0 near its optimum; -1 ignored
    0.0
    >>> round(float(loss(np.array([0, 2]), cosines)), 4)    # row 1: a negative (0.3) above m
    0.7627
    """

    def __init__(self, margin=0.25, gamma=256.0, reduction="sum_over_batch_size", name="circle_loss", dtype=None):
        super().__init__(margin, gamma, reduction=reduction, name=name, dtype=dtype)

    def call(self, y_true, y_pred):
        cosines = ops.cast(y_pred, "float32")
        num_classes = cosines.shape[-1]
        labels = ops.reshape(ops.cast(check_labels(y_true, num_classes, "y_true"), "int32"), (-1,))
        positive = ops.equal(labels[:, None], ops.arange(num_classes, dtype="int32")[None, :])
        valid = ops.logical_and(labels >= 0, labels < num_classes)
        losses = circle_loss_per_row(cosines, positive, ops.logical_not(positive), self.margin, self.gamma)
        return mean_over_valid_rows(losses, valid)


@keras.saving.register_keras_serializable(package="keras_cvx")
class PairwiseCircleLoss(_CircleBase):
    """Pair-wise Circle loss over all pairs of the batch, one loss per anchor.

    Paper: "Circle Loss: A Unified Perspective of Pair Similarity Optimization", Y. Sun et al.,
    CVPR 2020, https://arxiv.org/abs/2002.10857 (module docstring), with pair-wise labels, per
    anchor as ``CircleLoss`` of ``KevinMusgrave/pytorch-metric-learning`` (PML):
    ``S = û ûᵀ`` with ``û = e / ‖e‖`` (``normalize=True``); per anchor a::

        L_a = softplus(LSE_{b∈P(a)}(−γ α_p (S_ab − (1 − m))) + LSE_{b∈N(a)}(γ α_n (S_ab − m)))

    with positives ``P(a) = {b ≠ a: y_b = y_a}`` and negatives ``N(a) = {b: y_b ≠ y_a}``; mean
    over anchors with at least one positive and one negative (PML's reduction).

    Args:
        margin: relaxation ``m`` (default 0.4, the paper's fine-grained retrieval setting).
        gamma: scale ``γ`` (default 80, the paper's fine-grained retrieval setting).
        normalize: L2-normalise the embeddings first (default True; ``False``: the caller
            passes unit vectors, as ``keras.losses.Circle`` expects).
        reduction, name, dtype: as ``keras.losses.Loss`` (keep the default reduction).

    Shapes: ``y_true`` integer labels [B] (or [B, 1]), ``y_pred`` embeddings [B, D] -> float32
    scalar. Batches need several samples per class (P × K sampling), or there are no positives.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.losses import PairwiseCircleLoss
    >>> embeddings = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], "float32")
    >>> loss = PairwiseCircleLoss()
    >>> round(float(loss(np.array([0, 0, 1, 1]), embeddings)), 4)   # two well separated classes
    0.0
    >>> round(float(loss(np.array([0, 1, 0, 1]), embeddings)), 1)   # positives far apart
    117.8
    """

    def __init__(
        self, margin=0.4, gamma=80.0, normalize=True, reduction="sum_over_batch_size", name="pairwise_circle_loss", dtype=None
    ):
        super().__init__(margin, gamma, reduction=reduction, name=name, dtype=dtype)
        self.normalize = bool(normalize)

    def call(self, y_true, y_pred):
        embeddings = ops.cast(y_pred, "float32")
        if self.normalize:
            embeddings = l2_normalize(embeddings, axis=-1)
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        similarity = ops.matmul(embeddings, ops.transpose(embeddings))
        same = ops.equal(labels[:, None], labels[None, :])
        batch = ops.shape(labels)[0]
        not_self = ops.logical_not(ops.eye(batch, dtype="bool"))
        positive = ops.logical_and(same, not_self)
        negative = ops.logical_not(same)
        valid = ops.logical_and(ops.any(positive, axis=-1), ops.any(negative, axis=-1))
        losses = circle_loss_per_row(similarity, positive, negative, self.margin, self.gamma)
        return mean_over_valid_rows(losses, valid)

    def get_config(self):
        config = super().get_config()
        config.update(normalize=self.normalize)
        return config
