"""Neighbor Erasing Module (NEM) of NETNet.

Paper: "Neighbor Erasing and Transferring Network for Better Single Shot Object Detection",
Y. Li, Y. Pang, J. Shen, J. Cao, L. Shao, CVPR 2020, arXiv 2001.06690 (Sec. 3).

A spatial gate computed from the deeper level p_{s'} marks where larger objects are; the
shallow level p_s keeps the rest:

    g   = σ(G(p_{s'}))                    G: 1×1 conv C'→1 with bias (paper's choice), or
                                          channel-wise max / mean pooling (paper's variants)
    u   = U(g)                            bilinear resize to p_s's spatial size
    p^e = p_s ⊙ u                         erased part (features of larger objects)
    p̃_s = p_s − p^e = p_s ⊙ (1 − u)      kept part

Shapes: ``shallow`` (B, H, W, C), ``deep`` (B, H', W', C'); outputs ``[kept, erased]``, both
(B, H, W, C). NETNet pairs levels s and s + 2 (38×38 with 10×10 at 300), so U resizes to the
exact target size instead of a fixed factor; ``erased`` feeds ``NeighborTransferring``.

Choices (the paper leaves them open): the gate is one channel broadcast over C; σ is the
logistic sigmoid; U is half-pixel bilinear (``keras.ops.image.resize``, as PyTorch's
``align_corners=False``). The 1×1 conv has Keras's default initialisation (Glorot-uniform,
bias 0: gate ≈ 0.5 at the start). The gate is computed in float32. Parameters: C' + 1 for
``gate="conv"``, else 0.

Difference from the third-party re-implementation (no official code exists): we follow the
paper's equation p^e = p_s ⊙ U(g_{s'}) with g = σ(G(p_{s'})): the sigmoid gate is computed at
the deeper level's resolution and then up-sampled, ``U(σ(G(p)))``. The third-party code
(YorkU_2D_Detection_Benchmarking, ``NEModule``) up-samples the deeper features first and
applies the 1×1 conv and the sigmoid at the shallow resolution, ``σ(G(U(p))) = σ(U(G(p)))``
(the conv commutes with U, whose weights sum to 1; the sigmoid does not). The two gates are
not equal: between deep cells whose logits differ they follow different curves, e.g. with
logits of standard deviation 1 / 2 on a 10×10 map up-sampled to 38×38 they differ by up to
0.07 / 0.25. The pooling gates (``"max"``, ``"mean"``) are likewise pooled, squashed, then
up-sampled.
"""

import keras
from keras import ops

from keras_cvx.validation import require_choice

GATES = ("conv", "max", "mean")


@keras.saving.register_keras_serializable(package="keras_cvx")
class NeighborErasing(keras.layers.Layer):
    """NETNet's Neighbor Erasing Module: ``p̃_s = p_s ⊙ (1 − U(σ(G(p_{s'}))))``.

    Paper: "Neighbor Erasing and Transferring Network for Better Single Shot Object Detection",
    Y. Li et al., CVPR 2020, https://arxiv.org/abs/2001.06690, Sec. 3 (NEM). A gate computed
    from the deeper level ``p_{s'}`` (where larger objects respond) is up-sampled to the shallow
    level ``p_s`` and erases those features there; the erased part ``p^e = p_s ⊙ U(σ(G(p_{s'})))``
    feeds ``NeighborTransferring``. See the module docstring for our choices and the difference
    from the third-party re-implementation.

    Args:
        gate: ``"conv"`` (default; 1×1 conv to one channel, the paper's choice), ``"max"`` or
            ``"mean"`` (channel-wise pooling of the deeper level, the paper's ablations).
        kernel_initializer, bias_initializer: of the gate's 1×1 conv (default
            ``"glorot_uniform"``, ``"zeros"``).

    Call: ``layer(shallow, deep)`` with ``shallow`` (B, H, W, C) and ``deep`` (B, H', W', C') ->
    ``[kept, erased]``, both (B, H, W, C), ``kept + erased == shallow``.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.layers import NeighborErasing
    >>> nem = NeighborErasing(gate="mean")
    >>> shallow = np.ones((1, 4, 4, 2), "float32")
    >>> deep = np.zeros((1, 2, 2, 3), "float32")          # gate σ(0) = 0.5 everywhere
    >>> kept, erased = nem(shallow, deep)
    >>> tuple(kept.shape), float(kept[0, 0, 0, 0]), float(erased[0, 0, 0, 0])
    ((1, 4, 4, 2), 0.5, 0.5)
    """

    def __init__(self, gate="conv", kernel_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.gate = require_choice("gate", gate, GATES)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, shallow_shape, deep_shape):
        if len(shallow_shape) != 4 or len(deep_shape) != 4:
            raise ValueError(
                f"`shallow` and `deep` must be (B, H, W, C) tensors, got {shallow_shape} and {deep_shape}."
            )
        if self.gate == "conv":
            self.gate_conv = keras.layers.Conv2D(
                1,
                1,
                kernel_initializer=self.kernel_initializer.clone(),
                bias_initializer=self.bias_initializer.clone(),
                dtype=self.dtype_policy,
                name="gate_conv",
            )
            self.gate_conv.build(tuple(deep_shape))

    def gate_map(self, deep, size):
        """``U(σ(G(deep)))``: the up-sampled gate, (B, size[0], size[1], 1), float32."""
        if self.gate == "conv":
            logits = ops.cast(self.gate_conv(deep), "float32")
        elif self.gate == "max":
            logits = ops.max(ops.cast(deep, "float32"), axis=-1, keepdims=True)
        else:
            logits = ops.mean(ops.cast(deep, "float32"), axis=-1, keepdims=True)
        gate = ops.sigmoid(logits)
        if tuple(gate.shape[1:3]) == tuple(size):
            return gate
        return ops.image.resize(gate, size, interpolation="bilinear")

    def call(self, shallow, deep):
        gate = ops.cast(self.gate_map(deep, tuple(shallow.shape[1:3])), shallow.dtype)
        erased = shallow * gate
        return [shallow - erased, erased]

    def compute_output_shape(self, shallow_shape, deep_shape):
        return [tuple(shallow_shape), tuple(shallow_shape)]

    def get_config(self):
        config = super().get_config()
        config.update(
            gate=self.gate,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
        )
        return config
