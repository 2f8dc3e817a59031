"""SlimConv: the 3×3 convolution replacement of SC-ResNet (default layout k = 4/3).

Paper: "SlimConv: Reducing Channel Redundancy in Convolutional Neural Networks by Weights
Flipping", J. Qiu, C. Chen, S. Liu, B. Zeng, arXiv 2003.07469 (IEEE TIP 2021). Follows the
official ``slim_conv_3x3`` (JiaxiongQ/SlimConv, ``SC-ResNet.py``), converted to NHWC.

Input X: (B, H, W, C), C divisible by 4 and C ≥ r (r = ``reduction`` = 32):

    w    = σ(Conv1×1_{C/r→C, bias}(ReLU(BN(Conv1×1_{C→C/r}(mean_{HW} X)))))   (B, 1, 1, C)
    w_f  = w reversed over the channel axis                    ("weights flipping")
    T_in = (X ⊙ w)[..., :C/2]   + (X ⊙ w)[..., C/2:]           ("reconstruct": fold)
    U_in = (X ⊙ w_f)[..., :C/2] + (X ⊙ w_f)[..., C/2:]
    T    = BN(Conv3×3_{C/2→C/2, stride s}(T_in))                ("transform", top)
    U    = BN(Conv3×3_{C/4→C/4, stride s}(ReLU(BN(Conv1×1_{C/2→C/4}(U_in)))))  (bottom)
    Y    = concat([T, U])                                       ("fuse"): (B, H/s, W/s, 3C/4)

No activation on Y (the bottleneck applies ReLU after the module). Parameters (BN γ/β
counted, moving statistics not; C divisible by 32): 3C² + 3.0625·C, e.g. 12,484 for
C = 64 against 36,992 for a 3×3 convolution + BN.

Choices and deviations from the reference code:
- The 3×3 convolutions pad δ = ``dilation_rate`` pixels on every side explicitly
  (``ZeroPadding2D`` then a "valid" convolution), as PyTorch's ``padding=δ``, so stride-2
  outputs on even sizes sample the same grid as the reference (Keras "same" would pad
  only bottom/right). Output size ``ceil(H/s)``. Keras convolutions cannot combine a
  stride with a dilation, so ``dilation_rate > 1`` needs ``strides=1`` (PyTorch allows
  both; no released model uses it).
- Grouped 3×3 convolutions (``groups > 1``, ResNeXt) are not offered: every released
  SC-ResNet uses ``groups=1``, and the README's SC-ResNeXt-101 (32×3d) cannot be built by
  the released module (its first-stage width 96 gives C/2 = 48 and C/4 = 24 channels, not
  divisible by 32 groups). The k = 8/3 layout the README lists is not in the released code
  and is not offered.
- Every convolution (including the two of the weights branch) uses Kaiming-normal
  fan-out init as torchvision's ResNet (the official SC-ResNet init); the second
  weights-branch bias starts at zero (PyTorch: its default uniform init).
- BatchNormalization uses PyTorch's defaults (ε = 1e-5, momentum 0.1 → Keras 0.9). The
  weights-branch BN sees (B, C/r) vectors, so keep the per-replica batch ≥ 2 in training.
"""

import keras
from keras import ops

from keras_cvx.validation import require_choice, require_positive, require_positive_int, require_unit_interval

KAIMING_FAN_OUT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"},
}


@keras.saving.register_keras_serializable(package="keras_cvx")
class SlimConv2D(keras.layers.Layer):
    """SlimConv module: C channels in, 3C/4 channels out, spatial stride ``strides``.

    Paper: "SlimConv: Reducing Channel Redundancy in Convolutional Neural Networks by Weights
    Flipping", J. Qiu et al., https://arxiv.org/abs/2003.07469; follows the official
    ``slim_conv_3x3`` (``JiaxiongQ/SlimConv``, ``SC-ResNet.py``): SE-style channel weights
    ``w``, two copies of the input reweighted by ``w`` and by ``w`` reversed ("weights
    flipping"), each folded from C to C/2 channels ("reconstruct"), transformed by a 3×3 conv
    (top) and a 1×1 + 3×3 conv pair (bottom), then concatenated ("fuse"). Formulas and the
    differences from the reference code are in the module docstring.

    Args:
        strides: 1 (default) or 2, applied by both 3×3 convolutions.
        reduction: the weights branch's reduction ``r`` (default 32; hidden width ``C // r``
            ≥ 1).
        kernel_initializer: initializer of every convolution kernel (default Kaiming-normal
            fan-out, the official init).
        epsilon, momentum: of the four BatchNormalization layers (defaults 1e-5 and 0.9:
            PyTorch's defaults in Keras's convention).
        dilation_rate: δ of both 3×3 convolutions (and their padding, default 1); only with
            ``strides=1``.

    Shapes: ``(B, H, W, C)`` in (C divisible by 4 and ≥ r), ``(B, ceil(H/s), ceil(W/s), 3C/4)``
    out. Trainable parameters: 3C² + 3.0625·C (C divisible by 32).

    Example:

    >>> import numpy as np
    >>> from keras_cvx.layers import SlimConv2D
    >>> layer = SlimConv2D(strides=2)
    >>> tuple(layer(np.ones((2, 8, 8, 64), "float32")).shape)
    (2, 4, 4, 48)
    >>> sum(int(np.prod(w.shape)) for w in layer.trainable_weights)   # 3·64² + 3.0625·64
    12484
    """

    def __init__(
        self,
        strides=1,
        reduction=32,
        kernel_initializer=KAIMING_FAN_OUT,
        epsilon=1e-5,
        momentum=0.9,
        dilation_rate=1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.strides = require_choice("strides", strides, (1, 2))
        self.reduction = require_positive_int("reduction", reduction)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.epsilon = require_positive("epsilon", epsilon)
        self.momentum = require_unit_interval("momentum", momentum)
        self.dilation_rate = require_positive_int("dilation_rate", dilation_rate)
        if self.strides > 1 and self.dilation_rate > 1:
            raise ValueError(
                f"`dilation_rate`={dilation_rate} > 1 needs `strides`=1 (Keras convolutions take one or the other), "
                f"got `strides`={strides}."
            )

    def _conv(self, filters, kernel_size, strides, name, use_bias=False):
        return keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="valid",
            dilation_rate=self.dilation_rate if kernel_size > 1 else 1,
            use_bias=use_bias,
            kernel_initializer=self.kernel_initializer.clone(),
            dtype=self.dtype_policy,
            name=name,
        )

    def _norm(self, name):
        return keras.layers.BatchNormalization(
            epsilon=self.epsilon, momentum=self.momentum, dtype=self.dtype_policy, name=name
        )

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(f"`inputs` must be (B, H, W, C) with known C, got shape {input_shape}.")
        channels = int(input_shape[-1])
        self.input_spec = keras.InputSpec(ndim=4, axes={-1: channels})
        if channels % 4 or channels // self.reduction < 1:
            raise ValueError(
                f"`inputs` channels must be divisible by 4 and at least `reduction`={self.reduction}, got {channels}."
            )
        half, quarter, hidden = channels // 2, channels // 4, channels // self.reduction
        self.fc_reduce = self._conv(hidden, 1, 1, "fc_reduce")
        self.fc_norm = self._norm("fc_norm")
        self.fc_expand = self._conv(channels, 1, 1, "fc_expand", use_bias=True)
        self.top_pad = keras.layers.ZeroPadding2D(self.dilation_rate, dtype=self.dtype_policy, name="top_pad")
        self.top_conv = self._conv(half, 3, self.strides, "top_conv")
        self.top_norm = self._norm("top_norm")
        self.bottom_reduce = self._conv(quarter, 1, 1, "bottom_reduce")
        self.bottom_reduce_norm = self._norm("bottom_reduce_norm")
        self.bottom_pad = keras.layers.ZeroPadding2D(self.dilation_rate, dtype=self.dtype_policy, name="bottom_pad")
        self.bottom_conv = self._conv(quarter, 3, self.strides, "bottom_conv")
        self.bottom_norm = self._norm("bottom_norm")

        batch, height, width = input_shape[:3]
        self.fc_reduce.build((batch, 1, 1, channels))
        self.fc_norm.build((batch, 1, 1, hidden))
        self.fc_expand.build((batch, 1, 1, hidden))
        folded = (batch, height, width, half)
        self.top_pad.build(folded)
        padded = self.top_pad.compute_output_shape(folded)
        self.top_conv.build(padded)
        self.top_norm.build(self.top_conv.compute_output_shape(padded))
        self.bottom_reduce.build(folded)
        reduced = self.bottom_reduce.compute_output_shape(folded)
        self.bottom_reduce_norm.build(reduced)
        self.bottom_pad.build(reduced)
        padded = self.bottom_pad.compute_output_shape(reduced)
        self.bottom_conv.build(padded)
        self.bottom_norm.build(self.bottom_conv.compute_output_shape(padded))

    def channel_weights(self, inputs, training=None):
        """The SE-style weights ``w``: (B, 1, 1, C)."""
        pooled = ops.mean(inputs, axis=(1, 2), keepdims=True)
        hidden = ops.relu(self.fc_norm(self.fc_reduce(pooled), training=training))
        return ops.sigmoid(self.fc_expand(hidden))

    def reconstruct(self, inputs, training=None):
        """The two folded inputs ``(T_in, U_in)``, each (B, H, W, C/2)."""
        half = inputs.shape[-1] // 2
        weights = ops.cast(self.channel_weights(inputs, training=training), inputs.dtype)
        top = inputs * weights
        bottom = inputs * ops.flip(weights, axis=-1)
        return top[..., :half] + top[..., half:], bottom[..., :half] + bottom[..., half:]

    def call(self, inputs, training=None):
        top, bottom = self.reconstruct(inputs, training=training)
        top = self.top_norm(self.top_conv(self.top_pad(top)), training=training)
        bottom = ops.relu(self.bottom_reduce_norm(self.bottom_reduce(bottom), training=training))
        bottom = self.bottom_norm(self.bottom_conv(self.bottom_pad(bottom)), training=training)
        return ops.concatenate([top, bottom], axis=-1)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape

        def reduce(size):
            return None if size is None else (size - 1) // self.strides + 1

        return (batch, reduce(height), reduce(width), 3 * (channels // 4))

    def get_config(self):
        config = super().get_config()
        config.update(
            strides=self.strides,
            reduction=self.reduction,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            epsilon=self.epsilon,
            momentum=self.momentum,
            dilation_rate=self.dilation_rate,
        )
        return config
