"""Channel Equilibrium (CE) block: batch decorrelation (BD) + instance reweighting (IR).

Paper: "Channel Equilibrium Networks for Learning Deep Representation", W. Shao, S. Tang,
X. Pan, P. Tan, X. Wang, P. Luo, ICML 2020, arXiv 2003.00214. Follows the official code
(Tangshitao/CENet, ``devkit/ops/CE_module.py``), converted to NHWC.

Input x: (B, H, W, C); channels split into G = C / d contiguous groups of d channels
(d = ``group_size`` halved until it divides C); M = B·H·W; T = 3 Newton-Schulz steps.

BD (per group; training):
    μ   = mean_M x,   Σ = ε·I + mean_M (x − μ)(x − μ)ᵀ         (d × d, biased)
    Σ_N = Σ / tr(Σ);  P_0 = I;  P_{k+1} = 1.5·P_k − 0.5·P_k³·Σ_N;  W = P_T
    BD(x) = W · x     (uncentered x; W is NOT rescaled by tr(Σ)^(-1/2), as the code)
    running_W ← (1 − m)·running_W + m·W;     inference: BD(x) = running_W · x.
IR (per sample):
    v[b, c] = unbiased variance of x[b, :, :, c] over H·W
    g = σ(W2 · ReLU(LN(W1 · v)))     (W1: C → C/4, W2: C/4 → C, no biases)
    s = sqrt(mean_{b,c} v)  (training; running_scale ← (1 − m)·running_scale + m·s)
    IR(x) = x · g / s        (inference: s = running_scale)
CE(x) = λ·BD(x) + (1 − λ)·IR(x),  λ = σ(λ_raw), λ_raw = 0 at init (so λ = 0.5).

For channels uncorrelated with equal variance Σ_N = I/d and W = p_3·I with
p ← 1.5p − 0.5p³/d, p_0 = 1: BD(x) = 2.86506·x for d = 16 and 3.23389·x for d = 64.

Trainable parameters: C²/2 + C/2 + 1. State (non-trainable): running_W (G, d, d),
running_scale ().

Choices and deviations from the reference code:
- ``running_scale`` starts at 1.0, not 0 (the code divides by 0 when a fresh model is
  evaluated); ``running_mean`` is not kept (the code tracks it but never uses it).
- s = sqrt(max(mean v, ε)) so a constant input gives no division by zero (equal to the
  code whenever mean v ≥ ε); the H·W − 1 divisor of the unbiased variance is at least 1.
- Covariance, Newton-Schulz, the IR MLP and the scale run in float32 under every dtype
  policy (as Keras's ``BatchNormalization`` statistics); the output is cast back to the
  compute dtype.
- Running state under ``tf.distribute`` without ``synchronized``: each replica updates its
  own copy from its own batch (as Keras's ``BatchNormalization`` moving statistics);
  reading the variable gives the first replica's copy.

Cross-replica variant, ``synchronized=True`` (TensorFlow backend only; our design: the paper
reports a cross-GPU synchronised CE, but the released code has only SyncBN/SyncSN layers, so
this follows SyncBN):
the batch statistics are summed over the replicas of the current ``tf.distribute`` replica
context in three small all-reduces per call: Σx and M, then Σ(x − μ)(x − μ)ᵀ around the
global mean (two passes keep float32 covariances accurate where E[xxᵀ] − μμᵀ would
cancel), and the IR scale's Σv and count. Every replica then whitens with the statistics of the
global batch, gradients included (TF's all-reduce is differentiable), so N replicas give
the single-device result on the concatenated batch. The sum is the only ``tf`` use in the
layer: the small helper ``_cross_replica_sum`` imports TensorFlow only when a synchronized
layer is called in training mode (constructing one under another backend raises
``ValueError``). Outside any strategy the default replica context makes it an identity.
TensorFlow's cross-replica all-reduce is a ``merge_call``, which is only allowed directly in
the function given to ``strategy.run`` inside one ``tf.function``, e.g.
``model.fit(..., jit_compile=False)`` under ``MirroredStrategy``. It therefore cannot sit
inside an XLA-compiled replica step (a nested ``tf.function(jit_compile=True)`` per
replica), nor inside ``keras_cvx.training.Trainer``, whose per-replica forward+backward is
such a nested ``tf.function`` with or without XLA; there, use ``synchronized=False``.
"""

import keras
import numpy as np
from keras import ops

from keras_cvx.validation import require_positive, require_positive_int, require_unit_interval


# PyTorch's nn.Linear default, kaiming_uniform(a=√5) = U(±1/sqrt(fan_in)): the official code's
# init of the IR MLP (W1, W2).
PYTORCH_LINEAR_INIT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0 / 3.0, "mode": "fan_in", "distribution": "uniform"},
}


def group_size_for(channels, group_size):
    """d = ``group_size`` halved until it divides ``channels`` (the official ``CE`` rule)."""
    size = group_size
    while channels % size:
        size //= 2
    return size


def _cross_replica_sum(values):
    """Sums each tensor of ``values`` over the replicas of the current ``tf.distribute``
    replica context (TensorFlow backend only; see the module docstring)."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None:  # called in a cross-replica context: nothing to reduce over
        return values
    return context.all_reduce(tf.distribute.ReduceOp.SUM, values)


@keras.saving.register_keras_serializable(package="keras_cvx")
class ChannelEquilibrium(keras.layers.Layer):
    """Channel Equilibrium block: ``CE(x) = σ(λ)·BD(x) + (1 − σ(λ))·IR(x)``.

    Paper: "Channel Equilibrium Networks for Learning Deep Representation", W. Shao et al.,
    ICML 2020, https://arxiv.org/abs/2003.00214 (Figure 2: the two branches are summed); the
    equations follow the official code (``Tangshitao/CENet``, ``devkit/ops/CE_module.py``) and
    are written out in the module docstring: BD whitens each group of d channels with T
    Newton-Schulz steps on the batch covariance, IR rescales each sample's channels by a gate
    of their spatial variances divided by the batch's root-mean variance.

    Args:
        group_size: requested BD group size d (default 16, the official value in residual
            blocks; 64 in the stem); halved until it divides the channel count.
        reduction: IR MLP reduction (default 4; hidden width ``max(1, C // reduction)``).
        iterations: Newton-Schulz steps T (default 3, as the official code).
        momentum: m of the running averages (default 0.1, PyTorch convention:
            new = (1 − m)·old + m·batch).
        epsilon: ε added to Σ's diagonal and used by the IR LayerNorm (default 1e-5).
        synchronized: all-reduce the batch statistics across ``tf.distribute`` replicas
            (default False; TensorFlow backend only, see the module docstring).
        kernel_initializer: initializer of W1 and W2 (default PyTorch's ``nn.Linear`` init, as
            the official code).

    Call arguments:
        inputs: ``(B, H, W, C)``.
        training: batch statistics (and running-average updates) when True, the running
            whitening matrix and scale otherwise.

    Shapes: ``(B, H, W, C)`` in, the same shape out. Trainable parameters: C²/2 + C/2 + 1.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.layers import ChannelEquilibrium
    >>> x = np.random.default_rng(0).normal(size=(2, 4, 4, 32)).astype("float32")
    >>> layer = ChannelEquilibrium(group_size=16)
    >>> tuple(layer(x, training=True).shape)
    (2, 4, 4, 32)
    >>> sum(int(np.prod(w.shape)) for w in layer.trainable_weights)   # 32² / 2 + 32 / 2 + 1
    529
    """

    def __init__(
        self,
        group_size=16,
        reduction=4,
        iterations=3,
        momentum=0.1,
        epsilon=1e-5,
        synchronized=False,
        kernel_initializer=PYTORCH_LINEAR_INIT,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.group_size = require_positive_int("group_size", group_size)
        self.reduction = require_positive_int("reduction", reduction)
        self.iterations = require_positive_int("iterations", iterations)
        self.momentum = require_unit_interval("momentum", momentum, include_one=True)
        self.epsilon = require_positive("epsilon", epsilon)
        if not isinstance(synchronized, bool):
            raise ValueError(f"`synchronized` must be a bool, got {synchronized!r}.")
        if synchronized and keras.backend.backend() != "tensorflow":
            raise ValueError(
                f"`synchronized`=True needs the TensorFlow backend (tf.distribute), got {keras.backend.backend()!r}."
            )
        self.synchronized = synchronized
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(f"`inputs` must be (B, H, W, C) with known C, got shape {input_shape}.")
        channels = int(input_shape[-1])
        self.input_spec = keras.InputSpec(ndim=4, axes={-1: channels})
        self.group_channels = group_size_for(channels, self.group_size)
        self.num_groups = channels // self.group_channels
        hidden = max(1, channels // self.reduction)
        self.reduce = keras.layers.Dense(
            hidden, use_bias=False, kernel_initializer=self.kernel_initializer.clone(), dtype="float32", name="reduce"
        )
        self.norm = keras.layers.LayerNormalization(epsilon=self.epsilon, dtype="float32", name="norm")
        self.expand = keras.layers.Dense(
            channels, use_bias=False, kernel_initializer=self.kernel_initializer.clone(), dtype="float32", name="expand"
        )
        self.reduce.build((None, channels))
        self.norm.build((None, hidden))
        self.expand.build((None, hidden))
        self.gate = self.add_weight(name="gate", shape=(), initializer="zeros", dtype="float32", autocast=False)
        identity = np.tile(np.eye(self.group_channels, dtype="float32"), (self.num_groups, 1, 1))
        self.running_whitening = self.add_weight(
            name="running_whitening",
            shape=(self.num_groups, self.group_channels, self.group_channels),
            initializer=keras.initializers.Constant(identity),
            trainable=False,
            dtype="float32",
            autocast=False,
        )
        self.running_scale = self.add_weight(
            name="running_scale", shape=(), initializer="ones", trainable=False, dtype="float32", autocast=False
        )

    def _sum(self, values):
        return _cross_replica_sum(values) if self.synchronized else values

    def whitening(self, grouped):
        """Training-mode W = P_T from (M, G, d) float32 samples: (G, d, d)."""
        d = self.group_channels
        total, count = self._sum([ops.sum(grouped, axis=0), ops.cast(ops.shape(grouped)[0], "float32")])
        centered = grouped - total / count
        (outer,) = self._sum([ops.einsum("mgi,mgj->gij", centered, centered)])
        eye = ops.eye(d, dtype="float32")
        covariance = outer / count + self.epsilon * eye
        trace = ops.sum(ops.diagonal(covariance, axis1=1, axis2=2), axis=-1)
        normalized = covariance / trace[:, None, None]
        p = ops.tile(eye[None], (self.num_groups, 1, 1))
        for _ in range(self.iterations):
            p = 1.5 * p - 0.5 * ops.matmul(ops.matmul(ops.matmul(p, p), p), normalized)
        return p

    def batch_decorrelation(self, x, training=None):
        """BD(x) = W·x per pixel and group, from float32 (B, H, W, C) to the same shape.

        Training: W from the batch (updating ``running_whitening``); otherwise
        ``running_whitening``.
        """
        grouped = ops.reshape(x, (-1, self.num_groups, self.group_channels))
        if training:
            whitening = self.whitening(grouped)
            self.running_whitening.assign(
                (1.0 - self.momentum) * self.running_whitening + self.momentum * ops.stop_gradient(whitening)
            )
        else:
            whitening = self.running_whitening
        return ops.reshape(ops.einsum("gij,mgj->mgi", whitening, grouped), ops.shape(x))

    def instance_reweighting(self, x, training=None):
        """IR(x) = x·g(v)/s, from float32 (B, H, W, C) to the same shape.

        Training: s from the batch (updating ``running_scale``); otherwise ``running_scale``.
        """
        positions = ops.cast(ops.shape(x)[1] * ops.shape(x)[2], "float32")
        mean = ops.mean(x, axis=(1, 2), keepdims=True)
        variance = ops.sum(ops.square(x - mean), axis=(1, 2)) / ops.maximum(positions - 1.0, 1.0)
        gate = ops.sigmoid(self.expand(ops.relu(self.norm(self.reduce(variance)))))
        if training:
            total, count = self._sum([ops.sum(variance), ops.cast(ops.size(variance), "float32")])
            scale = ops.sqrt(ops.maximum(total / count, self.epsilon))
            self.running_scale.assign(
                (1.0 - self.momentum) * self.running_scale + self.momentum * ops.stop_gradient(scale)
            )
        else:
            scale = self.running_scale
        return x * (gate / scale)[:, None, None, :]

    def call(self, inputs, training=None):
        x = ops.cast(inputs, "float32")
        mix = ops.sigmoid(self.gate)
        outputs = mix * self.batch_decorrelation(x, training) + (1.0 - mix) * self.instance_reweighting(x, training)
        return ops.cast(outputs, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            group_size=self.group_size,
            reduction=self.reduction,
            iterations=self.iterations,
            momentum=self.momentum,
            epsilon=self.epsilon,
            synchronized=self.synchronized,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config
