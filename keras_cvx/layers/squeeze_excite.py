"""Squeeze-and-Excitation (SE) block, the channel-attention baseline CE, SlimConv and
DY-ReLU compare with.

Paper: "Squeeze-and-Excitation Networks", J. Hu, L. Shen, S. Albanie, G. Sun, E. Wu,
CVPR 2018, arXiv 1709.01507 (Eqs. 2-4).

    z = mean_{h,w} x                      (squeeze, Eq. 2)          (B, C)
    s = σ(W2 · ReLU(W1 · z + b1) + b2)    (excitation, Eq. 3)       (B, C)
    y = x ⊙ s                             (scale, Eq. 4)            (B, H, W, C)

W1: C → max(1, C // r), W2: max(1, C // r) → C, both with biases (as the reference
Caffe/PyTorch code, 1×1 convolutions on the pooled map). SE-ResNet-50 with r = 16 in all
16 bottlenecks therefore adds 2,530,992 parameters.
"""

import keras
from keras import ops

from keras_cvx.validation import require_positive_int


@keras.saving.register_keras_serializable(package="keras_cvx")
class SqueezeExcite(keras.layers.Layer):
    """Squeeze-and-Excitation: ``y = x · σ(W2 ReLU(W1 mean_{HW}(x) + b1) + b2)``.

    Paper: "Squeeze-and-Excitation Networks", J. Hu et al., CVPR 2018,
    https://arxiv.org/abs/1709.01507, Eqs. 2-4 (squeeze, excitation, scale). The baseline
    channel attention that CE, SlimConv and DY-ReLU compare with.

    Args:
        reduction: ``r`` (default 16, the paper's); the hidden width is ``max(1, C // r)``.
        kernel_initializer: initializer of ``W1`` and ``W2`` (biases start at 0).

    Shapes: ``(B, ..., C)`` (rank ≥ 3, channels last) in, the same shape out. Parameters:
    2·C·h + h + C with h = max(1, C // r).

    Example:

    >>> import numpy as np
    >>> from keras_cvx.layers import SqueezeExcite
    >>> se = SqueezeExcite(reduction=4, kernel_initializer="zeros")   # s = σ(0) = 0.5
    >>> y = se(np.ones((1, 2, 2, 8), "float32"))
    >>> tuple(y.shape), float(y[0, 0, 0, 0]), se.count_params()        # 2·8·2 + 2 + 8
    ((1, 2, 2, 8), 0.5, 42)
    """

    def __init__(self, reduction=16, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.reduction = require_positive_int("reduction", reduction)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.squeeze = None
        self.excite = None

    def build(self, input_shape):
        if len(input_shape) < 3 or input_shape[-1] is None:
            raise ValueError(f"`inputs` must have rank >= 3 and known channels, got shape {input_shape}.")
        channels = int(input_shape[-1])
        self.input_spec = keras.InputSpec(ndim=len(input_shape), axes={-1: channels})
        hidden = max(1, channels // self.reduction)
        self.squeeze = keras.layers.Dense(
            hidden, activation="relu", kernel_initializer=self.kernel_initializer.clone(), dtype=self.dtype_policy, name="squeeze"
        )
        self.excite = keras.layers.Dense(
            channels,
            activation="sigmoid",
            kernel_initializer=self.kernel_initializer.clone(),
            dtype=self.dtype_policy,
            name="excite",
        )
        self.squeeze.build((None, channels))
        self.excite.build((None, hidden))

    def call(self, inputs):
        spatial_axes = tuple(range(1, len(inputs.shape) - 1))
        scale = self.excite(self.squeeze(ops.mean(inputs, axis=spatial_axes)))
        broadcast = (-1,) + (1,) * len(spatial_axes) + (inputs.shape[-1],)
        return inputs * ops.cast(ops.reshape(scale, broadcast), inputs.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            reduction=self.reduction,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config
