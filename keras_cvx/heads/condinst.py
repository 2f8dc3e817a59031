"""CondInst heads: the controller that generates the dynamic mask-head parameters, the mask
branch, and the optional semantic-segmentation head used as an auxiliary training loss.

Paper: "Conditional Convolutions for Instance Segmentation", Z. Tian, C. Shen, H. Chen,
ECCV 2020, arXiv 2003.05664 (Sec. 3.1-3.2, Fig. 3), as released in AdelaiDet
(``CondInst.controller``, ``MaskBranch``).

* ``CondInstController``: one 3x3 conv from the FCOS box tower to the ``num_params`` (169)
  dynamic parameters of every location, shared over the levels, no activation; weights
  N(0, 0.01), bias 0. 389,545 parameters at 256 channels.
* ``CondInstMaskBranch`` (the released code; the paper draws it on P3 only)::

      x = refine_3(P3) + aligned_bilinear(refine_4(P4), 2) + aligned_bilinear(refine_5(P5), 4)
      refine_k = Conv3x3_{C -> 128, no bias} -> BN -> ReLU
      F_mask = Conv1x1_{128 -> 8, bias}( [Conv3x3 (no bias) -> BN -> ReLU] x 4 (x) )    stride 8

  1,477,384 trainable parameters at 256 input channels (plus 1,792 BN moving statistics).
* ``CondInstSemanticHead`` (AdelaiDet ``SEMANTIC_LOSS_ON``, training only): on P3,
  ``[Conv3x3 -> BN -> ReLU] x 2`` at 128 channels, then a 1x1 conv to ``num_classes`` logits
  with the focal-loss prior bias; 453,200 parameters for 80 classes.

Conv-BN-ReLU convs use Kaiming-uniform with a = 1 (Keras ``"lecun_uniform"``); the final 1x1
conv of the mask branch keeps PyTorch's default (uniform ±1/sqrt(fan_in) weights and bias).
BatchNorm: momentum 0.9 (PyTorch's 0.1), ε = 1e-5.
"""

import math

import keras
from keras import ops

from keras_cvx.heads.fcos import check_levels, flatten_levels
from keras_cvx.ops.upsampling import aligned_bilinear
from keras_cvx.validation import require_positive_int, require_unit_interval


def _conv_bn(filters, kernel_size, name, policy):
    """Conv (no bias, Kaiming-uniform a = 1) + BatchNorm, as AdelaiDet's ``conv_block`` with BN."""
    return [keras.layers.Conv2D(filters, kernel_size, padding="same", use_bias=False,
                                kernel_initializer="lecun_uniform", dtype=policy, name=f"{name}_conv"),
            keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, dtype=policy, name=f"{name}_bn")]


def _run(layers, x, training):
    """Applies [conv, BN] pairs with a ReLU after each BN."""
    for conv, norm in zip(layers[::2], layers[1::2]):
        x = ops.relu(norm(conv(x), training=training))
    return x


def _build(layers, shape):
    for layer in layers:
        layer.build(shape)
        shape = layer.compute_output_shape(shape)
    return shape


@keras.saving.register_keras_serializable(package="keras_cvx")
class CondInstController(keras.layers.Layer):
    """CondInst's controller: a shared 3x3 conv giving every location its dynamic mask-head
    parameters (arXiv 2003.05664 Sec. 3.1; module docstring).

    Args:
        num_params: parameters per location (default 169 = the default ``DynamicMaskHead``'s
            ``num_params``).

    Call: ``controller([T_3, ..., T_7])`` (the FCOS box tower maps) -> ``[B, N, num_params]``
    in level, row, column order.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.heads import CondInstController
    >>> controller = CondInstController()
    >>> tuple(controller([np.ones((1, 4, 4, 16), "float32"), np.ones((1, 2, 2, 16), "float32")]).shape)
    (1, 20, 169)
    """

    _call_takes_sequence = True

    def __init__(self, num_params=169, **kwargs):
        super().__init__(**kwargs)
        self.num_params = require_positive_int("num_params", num_params)
        self.conv = keras.layers.Conv2D(self.num_params, 3, padding="same",
                                        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                                        dtype=self.dtype_policy, name="controller")

    def build(self, input_shape):
        check_levels(input_shape, len(input_shape))
        self.conv.build(tuple(input_shape[0]))

    def call(self, features):
        return flatten_levels([self.conv(x) for x in features], self.num_params)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], sum(s[1] * s[2] for s in input_shape), self.num_params)

    def get_config(self):
        config = super().get_config()
        config.update(num_params=self.num_params)
        return config


@keras.saving.register_keras_serializable(package="keras_cvx")
class CondInstMaskBranch(keras.layers.Layer):
    """CondInst's mask branch: P3..P5 fused at stride 8, a conv tower, ``out_channels`` mask
    features (arXiv 2003.05664 Sec. 3.2, AdelaiDet ``MaskBranch``; module docstring).

    Args:
        channels: width of the refine convs and the tower (default 128).
        out_channels: mask feature channels C_mask (default 8).
        num_convs: tower conv-BN-ReLU blocks (default 4).

    Call: ``branch([P3, P4, P5], training=None)`` -> ``[B, H3, W3, out_channels]`` (the
    finest level's size; coarser levels are up-sampled by ``aligned_bilinear`` with factors
    2, 4, ... and cropped to it).

    Example:

    >>> import numpy as np
    >>> from keras_cvx.heads import CondInstMaskBranch
    >>> branch = CondInstMaskBranch(channels=16)
    >>> maps = [np.ones((1, 8 >> i, 8 >> i, 32), "float32") for i in range(3)]
    >>> tuple(branch(maps).shape)
    (1, 8, 8, 8)

    Differences from the reference implementation: AdelaiDet asserts that the finer size is a
    multiple of the coarser one; here the up-sampled map is cropped to the finest size.
    """

    _call_takes_sequence = True

    def __init__(self, channels=128, out_channels=8, num_convs=4, **kwargs):
        super().__init__(**kwargs)
        self.channels = require_positive_int("channels", channels)
        self.out_channels = require_positive_int("out_channels", out_channels)
        if isinstance(num_convs, bool) or not isinstance(num_convs, int) or num_convs < 0:
            raise ValueError(f"`num_convs` must be a non-negative integer, got {num_convs!r}.")
        self.num_convs = num_convs
        self.refine = []  # one [conv, BN] per input level, made in build()
        self.tower = []
        for i in range(self.num_convs):
            self.tower += _conv_bn(self.channels, 3, f"tower{i}", self.dtype_policy)
        self.output_conv = keras.layers.Conv2D(
            self.out_channels, 1,
            kernel_initializer=keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
            bias_initializer=keras.initializers.RandomUniform(-1 / math.sqrt(self.channels), 1 / math.sqrt(self.channels)),
            dtype=self.dtype_policy, name="output")

    def build(self, input_shape):
        check_levels(input_shape, len(input_shape))
        for i, shape in enumerate(input_shape):
            layers = _conv_bn(self.channels, 3, f"refine{i}", self.dtype_policy)
            _build(layers, tuple(shape))
            self.refine.append(layers)
        shape = tuple(input_shape[0])[:-1] + (self.channels,)
        self.output_conv.build(_build(self.tower, shape))

    def call(self, features, training=None):
        x = _run(self.refine[0], features[0], training)
        height, width = x.shape[1], x.shape[2]
        for i in range(1, len(features)):
            coarse = _run(self.refine[i], features[i], training)
            x = x + aligned_bilinear(coarse, 2**i)[:, :height, :width, :]
        return self.output_conv(_run(self.tower, x, training))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])[:-1] + (self.out_channels,)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, out_channels=self.out_channels, num_convs=self.num_convs)
        return config


@keras.saving.register_keras_serializable(package="keras_cvx")
class CondInstSemanticHead(keras.layers.Layer):
    """Auxiliary semantic-segmentation logits on P3 for CondInst's optional semantic loss
    (AdelaiDet ``MaskBranch`` with ``SEMANTIC_LOSS_ON``; module docstring). Used in training only.

    Args:
        num_classes: object classes K (no background column; sigmoid focal loss).
        channels: width of the two conv-BN-ReLU blocks (default 128).
        prior_probability: π of the logit bias ``-log((1 - π) / π)`` (default 0.01).

    Call: ``head(P3, training=None)`` -> logits ``[B, H3, W3, K]``.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.heads import CondInstSemanticHead
    >>> tuple(CondInstSemanticHead(3, channels=8)(np.ones((1, 4, 4, 16), "float32")).shape)
    (1, 4, 4, 3)
    """

    def __init__(self, num_classes, channels=128, prior_probability=0.01, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = require_positive_int("num_classes", num_classes)
        self.channels = require_positive_int("channels", channels)
        self.prior_probability = require_unit_interval("prior_probability", prior_probability)
        if not self.prior_probability > 0:
            raise ValueError(f"`prior_probability` must be in (0, 1), got {prior_probability!r}.")
        self.blocks = _conv_bn(self.channels, 3, "seg0", self.dtype_policy) + _conv_bn(
            self.channels, 3, "seg1", self.dtype_policy)
        bias = -math.log((1.0 - self.prior_probability) / self.prior_probability)
        self.logits = keras.layers.Conv2D(self.num_classes, 1, bias_initializer=keras.initializers.Constant(bias),
                                          dtype=self.dtype_policy, name="logits")

    def build(self, input_shape):
        self.logits.build(_build(self.blocks, tuple(input_shape)))

    def call(self, p3, training=None):
        return self.logits(_run(self.blocks, p3, training))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.num_classes,)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, channels=self.channels, prior_probability=self.prior_probability)
        return config
