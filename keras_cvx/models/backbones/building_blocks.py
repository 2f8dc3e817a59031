"""Pieces shared by the configurable backbones (``ResNet``, ``MobileNetV2``).

The options the papers compare are made pluggable here once:

* ``activation``: the static activation of the backbone (``"relu"`` for ResNet, ``"relu6"`` for
  MobileNetV2) or Dynamic ReLU ("Dynamic ReLU", Chen et al., ECCV 2020, arXiv 2003.10027)
  ``"dy_relu_a" | "dy_relu_b" | "dy_relu_c"``: every static activation of the network is
  replaced by its own ``DynamicReLU`` layer (type A/B/C, K = 2, reduction ``R``, the paper's defaults).
* ``attention``: ``"se"`` (Squeeze-and-Excitation, arXiv 1709.01507) or ``"ce"`` (Channel
  Equilibrium, arXiv 2003.00214); where they sit is decided by each backbone.
* ReZero ("ReZero is All You Need", arXiv 2003.04887): a residual block ``y = S(x) + α·F(x)``
  becomes ``ReZero(F)(x, shortcut=S(x))`` with the branch ``F`` as a nested Functional model;
  ``S`` is the identity or the block's projection, computed outside the gate.

Convolutions follow the PyTorch reference code so that ported weights give the same outputs:
no bias, BatchNormalization with PyTorch's ε = 1e-5 and momentum 0.1 (Keras ``momentum=0.9``),
and stride-2 convolutions with a kernel larger than 1 pad ``k // 2`` pixels on every side
(``ZeroPadding2D``) before a "valid" convolution; Keras's "same" would pad only bottom/right.
Convolution kernels start Kaiming-normal (fan-out, ReLU gain) as torchvision's ResNet and
MobileNetV2, with Keras's fan-out of a depthwise kernel (k·k·multiplier instead of PyTorch's
k·k·C). The classifier is global average pooling and a float32 ``Dense`` (logits unless
``classifier_activation`` is given) with PyTorch's ``nn.Linear`` kernel init U(±1/√fan_in)
and a zero bias.
"""

import keras

from keras_cvx.layers.channel_equilibrium import ChannelEquilibrium
from keras_cvx.layers.dynamic_relu import DynamicReLU
from keras_cvx.layers.rezero import ReZero
from keras_cvx.layers.squeeze_excite import SqueezeExcite
from keras_cvx.validation import require_choice, require_positive_int

FEATURE_NAMES = ("C2", "C3", "C4", "C5")
DYNAMIC_RELU_VARIANTS = {"dy_relu_a": "A", "dy_relu_b": "B", "dy_relu_c": "C"}
ATTENTIONS = ("se", "ce")
BATCH_NORM_EPSILON = 1e-5
BATCH_NORM_MOMENTUM = 0.9


def kaiming_fan_out():
    """A fresh Kaiming-normal (fan-out, gain √2) initializer (one per layer, so each draws anew)."""
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_out", distribution="untruncated_normal")


class BlockOptions:
    """The activation and attention choices of one backbone, validated once.

    Args:
        activation: ``static_activation`` or one of ``"dy_relu_a"``, ``"dy_relu_b"``, ``"dy_relu_c"``.
        attention: ``None``, ``"se"`` or ``"ce"``.
        static_activation: the backbone's plain activation, ``"relu"`` or ``"relu6"``.
        se_reduction: SE reduction ``r``.
        dy_relu_reduction: DY-ReLU hyper-function reduction ``R``.
    """

    def __init__(self, activation, attention, static_activation, se_reduction, dy_relu_reduction):
        self.activation = require_choice("activation", activation, (static_activation,) + tuple(DYNAMIC_RELU_VARIANTS))
        if attention is not None:
            require_choice("attention", attention, ATTENTIONS)
        self.attention = attention
        self.static_activation = static_activation
        self.se_reduction = require_positive_int("se_reduction", se_reduction)
        self.dy_relu_reduction = require_positive_int("dy_relu_reduction", dy_relu_reduction)

    def activate(self, x, name):
        if self.activation == "relu":
            layer = keras.layers.ReLU(name=name)
        elif self.activation == "relu6":
            layer = keras.layers.ReLU(max_value=6.0, name=name)
        else:
            variant = DYNAMIC_RELU_VARIANTS[self.activation]
            layer = DynamicReLU(variant=variant, reduction=self.dy_relu_reduction, name=name)
        return layer(x)

    def attend(self, x, name, ce_group_size=16):
        """The attention block on ``x`` (``x`` itself when ``attention`` is ``None``)."""
        if self.attention == "se":
            return SqueezeExcite(reduction=self.se_reduction, name=name)(x)
        if self.attention == "ce":
            return ChannelEquilibrium(group_size=ce_group_size, name=name)(x)
        return x


def conv_bn(x, filters, kernel_size, strides, name, depthwise=False):
    """``Conv2D`` (or ``DepthwiseConv2D``) without bias, then ``BatchNormalization``.

    Layers are named ``{name}_conv`` and ``{name}_bn`` (``{name}_pad`` for the symmetric
    padding of a strided convolution).
    """
    padding = "same" if kernel_size > 1 else "valid"
    if strides > 1 and kernel_size > 1:
        x = keras.layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    common = {"strides": strides, "padding": padding, "use_bias": False, "name": f"{name}_conv"}
    if depthwise:
        conv = keras.layers.DepthwiseConv2D(kernel_size, depthwise_initializer=kaiming_fan_out(), **common)
    else:
        conv = keras.layers.Conv2D(filters, kernel_size, kernel_initializer=kaiming_fan_out(), **common)
    return batch_norm(conv(x), f"{name}_bn")


def batch_norm(x, name):
    return keras.layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, momentum=BATCH_NORM_MOMENTUM, name=name)(x)


def rezero_residual(x, branch, name, shortcut=None):
    """``S + α·branch(x)`` with the branch as a nested Functional model ``{name}_branch`` inside
    ``ReZero`` (layer ``{name}_rezero``). ``S`` is ``shortcut`` (e.g. the projection of a
    down-sampling block, a tensor of the branch's output shape) or, when ``None``, ``x`` itself
    (then ``branch`` must keep the shape)."""
    inputs = keras.Input(shape=x.shape[1:], name=f"{name}_branch_input")
    model = keras.Model(inputs, branch(inputs), name=f"{name}_branch")
    gate = ReZero(model, name=f"{name}_rezero")
    return gate(x) if shortcut is None else gate(x, shortcut=shortcut)


def check_input_shape(input_shape):
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3 or input_shape[-1] is None:
        raise ValueError(f"`input_shape` must be (height, width, channels) with known channels, got {input_shape!r}.")
    return tuple(input_shape)


def model_outputs(features, include_top, num_classes, classifier_activation):
    """A backbone's outputs: the ``features`` dict (``include_top=False``) or the classifier's
    output on ``features["C5"]``."""
    if not include_top:
        return features
    require_positive_int("num_classes", num_classes)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(features["C5"])
    x = keras.layers.Dense(
        num_classes,
        activation=classifier_activation,
        kernel_initializer=keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform"),
        dtype="float32",
        name="predictions",
    )(x)
    return x
