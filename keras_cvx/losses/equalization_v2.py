"""Equalization Loss v2 (gradient-guided re-weighting), as a layer that owns its statistics.

Paper: "Equalization Loss v2: A New Gradient Balance Approach for Long-tailed Object
Detection", J. Tan, X. Lu, G. Zhang, C. Yin, Q. Li, CVPR 2021, arXiv 2012.08548 (extension of
"Equalization Loss for Long-Tailed Object Recognition", arXiv 2003.05176). Equations as in the
official code (``tztztztztz/eqlv2``, ``mmdet/models/losses/eqlv2.py``, class ``EQLv2``):

    logits z [R, C+1] (last column = background), one-hot targets Y [R, C+1]
    g_j      = pos_grad_j / (neg_grad_j + 1e-10)        (accumulated; 100 before any update)
    neg_w_j  = σ(γ (g_j − μ)),   pos_w_j = 1 + α (1 − neg_w_j),   background column: 1
    W        = pos_w Y + neg_w (1 − Y)                   (constants)
    L        = Σ_{r,j} W_rj BCE(z_rj, Y_rj) / R
    after the loss (training only, detached):
        pos_grad_j += Σ_r |p_rj − 1| Y_rj W_rj,   neg_grad_j += Σ_r p_rj (1 − Y_rj) W_rj,   p = σ(z)

``|∂BCE/∂z|`` is ``|p − y|``, so these are the gradient magnitudes of the reference's backward
hook, computed in the forward pass (same numbers, no hook).

Why a layer and not a ``keras.losses.Loss``: the statistics are state that must be saved with
the model; a ``Loss`` has no tracked variables. Put it in the model (e.g. as an attribute of
the detector) and call it from ``compute_loss``; its two non-trainable variables are then
saved in ``.keras`` files and checkpoints and updated inside compiled steps (TF and JAX).

Output: per-RoI values [R] whose mean is L (each valid row's Σ_j W BCE is scaled by
R / #valid; label −1 marks padding rows, which give 0 and are not counted and not collected).

Cross-replica reduction: ``pos_grad`` and ``neg_grad`` are variables with
``aggregation="sum"``. Under a ``tf.distribute`` strategy, ``keras_cvx.training.Trainer``
collects every replica's increments inside the compiled step and adds their sum to the
statistics of every replica when it commits the step, so every replica holds the statistics
of the whole global batch, as the reference's all-reduce does every step (1 device on the
concatenated batch equals N replicas). The ratio g is computed from the statistics when
the weights are needed (100 while ``neg_grad`` is still 0, i.e. before any update).
"""

import keras
from keras import ops

from keras_cvx.losses.circle import mean_over_valid_rows
from keras_cvx.validation import check_labels, require_positive, require_positive_int

INITIAL_RATIO = 100.0


@keras.saving.register_keras_serializable(package="keras_cvx")
class EqualizationLossV2(keras.layers.Layer):
    """Equalization Loss v2 as a layer that owns its gradient statistics.

    Paper: "Equalization Loss v2: A New Gradient Balance Approach for Long-tailed Object
    Detection", J. Tan et al., CVPR 2021, https://arxiv.org/abs/2012.08548; the equations of
    the official ``EQLv2`` (``tztztztztz/eqlv2``, ``mmdet/models/losses/eqlv2.py``), written
    out in the module docstring: per-class BCE weights ``neg_w = σ(γ (g − μ))`` and
    ``pos_w = 1 + α (1 − neg_w)`` from the accumulated ratio ``g`` of positive to negative
    gradient magnitudes (100, i.e. plain BCE, before any update).

    ``loss_per_roi = layer(labels, logits, training=...)`` (Keras's ``(y_true, y_pred)`` order).

    Args:
        num_classes: foreground classes ``C`` (the logits have ``C + 1`` columns).
        gamma: ``γ`` of the weight mapping (default 12, the official value).
        mu: ``μ`` of the weight mapping (default 0.8).
        alpha: ``α`` of the positive weight (default 4).

    Call: ``labels`` [R] integer in ``{-1 (padding), 0..C-1, C (background)}`` (other values
    raise a ``ValueError`` in eager mode), ``logits`` [R, C+1];
    ``training=True`` updates the statistics after computing the loss. Returns float32 [R];
    ``ops.mean`` of it is the loss.

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.losses import EqualizationLossV2
    >>> layer = EqualizationLossV2(num_classes=2)
    >>> labels, logits = np.array([0, 2]), np.zeros((2, 3), "float32")   # class 0, background
    >>> per_roi = layer(labels, logits, training=True)        # weights 1 before any statistics
    >>> round(float(keras.ops.mean(per_roi)), 4)              # 3 ln 2 per RoI
    2.0794
    >>> layer.statistics()["pos_neg_ratio"].tolist()         # g = pos_grad / neg_grad
    [1.0, 0.0]
    """

    def __init__(self, num_classes, gamma=12.0, mu=0.8, alpha=4.0, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = require_positive_int("num_classes", num_classes)
        self.gamma = require_positive("gamma", gamma)
        self.mu = float(mu)
        self.alpha = float(alpha)
        if self.alpha < 0:
            raise ValueError(f"`alpha` must be >= 0, got {alpha!r}.")

    def build(self, labels_shape, logits_shape):
        if logits_shape[-1] is not None and logits_shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"`logits` must have num_classes + 1 = {self.num_classes + 1} columns, got {tuple(logits_shape)}."
            )

        def statistic(name):
            return self.add_weight(shape=(self.num_classes,), initializer="zeros", dtype="float32",
                                   trainable=False, aggregation="sum", name=name)

        self.pos_grad = statistic("pos_grad")
        self.neg_grad = statistic("neg_grad")

    def pos_neg_ratio(self):
        """The ratio g [C] of the accumulated statistics (100 before any update)."""
        pos_grad, neg_grad = ops.convert_to_tensor(self.pos_grad), ops.convert_to_tensor(self.neg_grad)
        return ops.where(neg_grad > 0, pos_grad / (neg_grad + 1e-10), INITIAL_RATIO)

    def class_weights(self):
        """``(pos_w, neg_w)`` [C] from the current statistics."""
        neg_w = ops.sigmoid(self.gamma * (self.pos_neg_ratio() - self.mu))
        return 1.0 + self.alpha * (1.0 - neg_w), neg_w

    def statistics(self):
        """Accumulated ``pos_grad``, ``neg_grad`` and ratio ``g`` as NumPy arrays."""
        return {name: ops.convert_to_numpy(v) for name, v in
                (("pos_grad", self.pos_grad), ("neg_grad", self.neg_grad), ("pos_neg_ratio", self.pos_neg_ratio()))}

    def call(self, labels, logits, training=None):
        logits = ops.cast(logits, "float32")
        labels = ops.reshape(ops.cast(check_labels(labels, self.num_classes, background=True), "int32"), (-1,))
        valid = labels >= 0
        targets = ops.one_hot(ops.maximum(labels, 0), self.num_classes + 1)
        pos_w, neg_w = self.class_weights()
        ones = ops.ones((1,), "float32")
        pos_w, neg_w = ops.concatenate([pos_w, ones])[None, :], ops.concatenate([neg_w, ones])[None, :]
        weights = ops.stop_gradient(pos_w * targets + neg_w * (1.0 - targets))
        bce = ops.relu(logits) - logits * targets + ops.log1p(ops.exp(-ops.abs(logits)))
        losses = mean_over_valid_rows(ops.sum(weights * bce, axis=-1), valid)
        if training:
            self._collect(ops.stop_gradient(ops.sigmoid(logits)), targets, weights, valid)
        return losses

    def _collect(self, probabilities, targets, weights, valid):
        row = ops.cast(valid, "float32")[:, None]
        probabilities, targets, weights = (t[:, : self.num_classes] for t in (probabilities, targets, weights))
        self.pos_grad.assign_add(ops.sum(ops.abs(probabilities - 1.0) * targets * weights * row, axis=0))
        self.neg_grad.assign_add(ops.sum(probabilities * (1.0 - targets) * weights * row, axis=0))

    def compute_output_shape(self, labels_shape, logits_shape):
        return (logits_shape[0],)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, gamma=self.gamma, mu=self.mu, alpha=self.alpha)
        return config
