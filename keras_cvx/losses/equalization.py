"""Equalization Loss (EQL): sigmoid (detection) and softmax (classification) forms.

Paper: "Equalization Loss for Long-Tailed Object Recognition", J. Tan, C. Wang, B. Li, Q. Li,
W. Ouyang, C. Yin, J. Yan, CVPR 2020, arXiv 2003.05176.

Sigmoid EQL (paper Eq. 4-6; official ``eql.detectron2`` ``eql_loss``): logits z [R, C] without
a background logit, labels g [R] in [0, C] (C = background),

    Y[r, j] = [g_r = j]                     (background rows are all zero)
    E(r)    = [g_r ≠ C]                     (exclusion: foreground RoIs only)
    T_λ(j)  = [f_j < λ]                     (tail classes, strict)
    w[r, j] = 1 − E(r) T_λ(j) (1 − Y[r, j])
    L       = Σ_{r,j} w[r, j] BCE(z[r, j], Y[r, j]) / R

i.e. summed over classes, divided by the number of RoIs R (foreground + background).
Extension (ours; neither the paper nor the official code pads RoIs): label −1 marks padding;
such rows get weight 0 and R counts only valid rows, so a detector can pad its RoIs to a
static count. Any other label outside ``[0, C]`` (``[0, C)`` for the softmax loss) raises a
``ValueError`` when the labels are concrete (eager); compiled code cannot raise, so
``keras_cvx.training.Trainer`` checks every batch before its compiled step.

Softmax EQL (paper Eq. 8-9, image classification; no background, so E = 1):

    β[b, k] ~ Bernoulli(γ),   w[b, k] = 1 − β[b, k] T_λ(k) (1 − Y[b, k])
    L_b = logsumexp_k(z[b, k] + log w[b, k]) − z[b, y_b],   L = mean_b L_b

``log w`` is 0 or the finite constant −1e9 (never −inf). β is drawn per (sample, class)
element (as the third-party SEQL code does; the paper's granularity is unconfirmed) from a
``keras.random.SeedGenerator``, so the same seed gives the same sequence of draws.
All math is float32.
"""

import keras
import numpy as np
from keras import ops

from keras_cvx.losses.circle import MASKED_LOGIT, mean_over_valid_rows
from keras_cvx.validation import check_labels, require_positive, require_unit_interval


def tail_class_mask(class_frequencies, frequency_threshold):
    """EQL's threshold function ``T_λ``: 1.0 where ``f_j < λ`` (strictly), as float32 NumPy [C].

    Paper: "Equalization Loss for Long-Tailed Object Recognition", J. Tan et al., CVPR 2020,
    https://arxiv.org/abs/2003.05176 (the threshold function of the EQL weight, module
    docstring).

    Args:
        class_frequencies: image-level frequency ``f_j`` of each class [C] (see
            ``keras_cvx.data.class_frequencies``).
        frequency_threshold: ``λ``.

    Returns: float32 NumPy vector [C] of 0/1.

    Example:

    >>> from keras_cvx.losses import tail_class_mask
    >>> tail_class_mask([1e-4, 0.2, 1e-3, 0.00177], 0.00177).tolist()
    [1.0, 0.0, 1.0, 0.0]
    """
    return (np.asarray(class_frequencies, np.float64) < frequency_threshold).astype("float32")


class _EqualizationBase(keras.losses.Loss):
    def __init__(self, class_frequencies, frequency_threshold, tail_mask, reduction, name, dtype):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if (class_frequencies is None) == (tail_mask is None):
            raise ValueError("Give exactly one of `class_frequencies` and `tail_mask`.")
        self.frequency_threshold = require_positive("frequency_threshold", frequency_threshold)
        if class_frequencies is not None:
            frequencies = np.asarray(class_frequencies, np.float64).reshape(-1)
            if frequencies.size < 1 or np.any(frequencies < 0) or not np.all(np.isfinite(frequencies)):
                raise ValueError(f"`class_frequencies` must be finite values >= 0, got {class_frequencies!r}.")
            self.class_frequencies = [float(f) for f in frequencies]
            self.tail_mask = None
            self._tail = tail_class_mask(frequencies, self.frequency_threshold)
        else:
            mask = np.asarray(tail_mask).reshape(-1)
            if mask.size < 1 or not np.all(np.isin(mask, (0, 1))):
                raise ValueError(f"`tail_mask` must be a non-empty list of 0/1 values, got {tail_mask!r}.")
            self.class_frequencies = None
            self.tail_mask = [int(v) for v in mask]
            self._tail = mask.astype("float32")
        self.num_classes = int(self._tail.size)

    def _check_logits(self, logits):
        if logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"`y_pred` must have {self.num_classes} classes (one per frequency), got shape {tuple(logits.shape)}."
            )

    def get_config(self):
        config = super().get_config()
        config.update(
            class_frequencies=self.class_frequencies,
            frequency_threshold=self.frequency_threshold,
            tail_mask=self.tail_mask,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_cvx")
class EqualizationLoss(_EqualizationBase):
    """Sigmoid Equalization Loss for a detector's second-stage classifier.

    Paper: "Equalization Loss for Long-Tailed Object Recognition", J. Tan et al., CVPR 2020,
    https://arxiv.org/abs/2003.05176, Eq. 4-6; official code ``tztztztztz/eql.detectron2``
    (``eql_loss``). Binary cross-entropy summed over the C foreground classes, where a
    foreground RoI of class g drops the negative terms of the tail classes ``j ≠ g``
    (``f_j < λ``); background RoIs keep every term::

        w[r, j] = 1 − E(r) T_λ(j) (1 − Y[r, j]),   L = Σ_{r,j} w[r, j] BCE(z[r, j], Y[r, j]) / R

    Args:
        class_frequencies: image-level frequency ``f_j`` of each foreground class [C] (see
            ``keras_cvx.data.class_frequencies``); or None when ``tail_mask`` is given.
        frequency_threshold: ``λ``, default 0.00177: the value of the official code
            (``eql.detectron2``, ``cfg.MODEL.ROI_HEADS.LAMBDA``) with which its published
            numbers were obtained; on LVIS v0.5 (image_count / 56,740) it makes exactly the
            rare + common classes tail (915 classes). The paper's text cites λ = 1.76e-3,
            which differs by the three common classes seen in exactly 100 images
            (100 / 56,740 = 1.7624e-3 is not below 1.76e-3: 912 tail classes); pass
            ``frequency_threshold=1.76e-3`` for that set.
        tail_mask: optional explicit ``T`` [C] of 0/1 instead of frequencies.
        reduction, name, dtype: as ``keras.losses.Loss`` (keep the default reduction: ``call``
            scales the rows so that it yields the mean over valid RoIs).

    Shapes: ``y_true`` integer labels [R] in ``{-1 (padding), 0..C-1, C (background)}``;
    ``y_pred`` logits [R, C] (no background logit). The value is the sum over classes averaged
    over valid RoIs, float32.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.losses import EqualizationLoss
    >>> loss = EqualizationLoss(class_frequencies=[1e-4, 0.2, 1e-3])   # λ = 0.00177: 0, 2 tail
    >>> labels = np.array([1, 3, -1])             # class 1, background (C = 3), padding
    >>> round(float(loss(labels, np.zeros((3, 3), "float32"))), 4)    # (ln 2 + 3 ln 2) / 2
    1.3863
    """

    def __init__(
        self,
        class_frequencies=None,
        frequency_threshold=0.00177,
        tail_mask=None,
        reduction="sum_over_batch_size",
        name="equalization_loss",
        dtype=None,
    ):
        super().__init__(class_frequencies, frequency_threshold, tail_mask, reduction, name, dtype)

    def equalization_weights(self, labels):
        """``w`` [R, C] (float32, no gradient) and the valid-row mask [R] for integer labels."""
        check_labels(labels, self.num_classes, "y_true", background=True)
        labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
        targets = ops.one_hot(ops.maximum(labels, 0), self.num_classes + 1)[:, : self.num_classes]
        foreground = ops.cast(ops.logical_and(labels >= 0, labels < self.num_classes), "float32")
        tail = ops.convert_to_tensor(self._tail, "float32")
        weights = 1.0 - foreground[:, None] * tail[None, :] * (1.0 - targets)
        return weights, targets, labels >= 0

    def call(self, y_true, y_pred):
        logits = ops.cast(y_pred, "float32")
        self._check_logits(logits)
        weights, targets, valid = self.equalization_weights(y_true)
        bce = ops.relu(logits) - logits * targets + ops.log1p(ops.exp(-ops.abs(logits)))
        return mean_over_valid_rows(ops.sum(weights * bce, axis=-1), valid)


@keras.saving.register_keras_serializable(package="keras_cvx")
class SoftmaxEqualizationLoss(_EqualizationBase):
    """Softmax Equalization Loss for long-tailed image classification.

    Paper: "Equalization Loss for Long-Tailed Object Recognition", J. Tan et al., CVPR 2020,
    https://arxiv.org/abs/2003.05176, Eq. 8-9 (the softmax form, no background): each tail
    class ``k ≠ y`` leaves the softmax denominator with probability ``γ``::

        β[b, k] ~ Bernoulli(γ),   w[b, k] = 1 − β[b, k] T_λ(k) (1 − Y[b, k])
        L_b = −log(exp(z[b, y_b]) / Σ_k w[b, k] exp(z[b, k])),   L = mean_b L_b

    Args:
        class_frequencies: fraction of training samples of each class [C] (or ``tail_mask``).
        frequency_threshold: ``λ`` (default 0.005, the third-party ``SEQL`` default of
            ``zhangyongshun/BagofTricks-LT``; the paper's values are dataset-specific).
        gamma: probability ``γ`` that a tail negative is dropped from the softmax denominator
            (β = 1); default 0.9 (the same third-party default).
        seed: seed of the ``SeedGenerator`` that draws β; a new β every call.
        tail_mask: optional explicit ``T`` [C] of 0/1.
        reduction, name, dtype: as ``keras.losses.Loss`` (keep the default reduction).

    Shapes: ``y_true`` integer labels [B], ``y_pred`` logits [B, C] -> float32 scalar. Labels
    −1 are ignored.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.losses import SoftmaxEqualizationLoss
    >>> loss = SoftmaxEqualizationLoss(tail_mask=[0, 1, 1], gamma=1.0)   # always drop: β = 1
    >>> logits = np.zeros((2, 3), "float32")
    >>> round(float(loss(np.array([0, 1]), logits)), 4)       # (log 1 + log 2) / 2
    0.3466
    """

    def __init__(
        self,
        class_frequencies=None,
        frequency_threshold=5e-3,
        gamma=0.9,
        seed=None,
        tail_mask=None,
        reduction="sum_over_batch_size",
        name="softmax_equalization_loss",
        dtype=None,
    ):
        super().__init__(class_frequencies, frequency_threshold, tail_mask, reduction, name, dtype)
        self.gamma = require_unit_interval("gamma", gamma, include_one=True)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"`seed` must be None or an integer >= 0, got {seed!r}.")
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, y_true, y_pred):
        logits = ops.cast(y_pred, "float32")
        self._check_logits(logits)
        labels = ops.reshape(ops.cast(check_labels(y_true, self.num_classes, "y_true"), "int32"), (-1,))
        targets = ops.one_hot(ops.maximum(labels, 0), self.num_classes)
        beta = keras.random.uniform(ops.shape(logits), seed=self.seed_generator) < self.gamma
        tail = ops.convert_to_tensor(self._tail, "float32")
        dropped = ops.cast(beta, "float32") * tail[None, :] * (1.0 - targets)
        log_weights = ops.where(dropped > 0, MASKED_LOGIT, 0.0)
        losses = ops.logsumexp(logits + log_weights, axis=-1) - ops.sum(logits * targets, axis=-1)
        return mean_over_valid_rows(losses, labels >= 0)

    def get_config(self):
        config = super().get_config()
        config.update(gamma=self.gamma, seed=self.seed)
        return config
