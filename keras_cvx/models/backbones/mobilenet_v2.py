"""MobileNetV2 with pluggable blocks: SE / Channel Equilibrium attention, Dynamic ReLU, ReZero.

Papers:
* "MobileNetV2: Inverted Residuals and Linear Bottlenecks", M. Sandler et al., CVPR 2018,
  arXiv 1801.04381 (the backbone, torchvision's layout and channel rounding).
* "Dynamic ReLU", Y. Chen et al., ECCV 2020, arXiv 2003.10027 — ``activation="dy_relu_*"``
  (the paper's MobileNetV2 row: top-1 72.0 → 76.2 with DY-ReLU-B).
* "Channel Equilibrium Networks for Learning Deep Representation", W. Shao et al., ICML 2020,
  arXiv 2003.00214 — ``attention="ce"``; "Squeeze-and-Excitation Networks", arXiv 1709.01507 —
  ``attention="se"``.
* "ReZero is All You Need", T. Bachlechner et al., arXiv 2003.04887 — ``rezero=True``.

Network (α = width multiplier, channels rounded to multiples of 8 as torchvision's
``_make_divisible``)::

    stem:   pad 1, conv3×3/2 (32α) → BN → act
    block:  [conv1×1 (t·C_in) → BN → act] → dwconv3×3/s → BN → act → [att: "expanded"]
            → conv1×1 (C_out) → BN → [att: "output"] → (+ x when s = 1 and C_in = C_out)
    (t, C_out, n, s): (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1)
    top:    conv1×1 (1280·max(1, α)) → BN → act → [global average pool → Dense]

``act`` is ReLU6 or, with DY-ReLU, one ``DynamicReLU`` in place of every ReLU6 (stem, after the
expansion, after the depthwise conv and in the top conv; the projection stays linear). The
paper replaces MobileNetV2's ReLU6 with DY-ReLU; this per-layer placement is our reading.
DY-ReLU is unbounded (no clipping at 6).

Choices where the papers are silent (inferred):
* CE / SE sit after the projection BN, before the add (``attention_position="output"``, where
  the official CE code puts CE in ResNet blocks: after the last BN), or after the depthwise
  activation in the expanded space
  (``"expanded"``, where MobileNetV3 / MnasNet put SE). Every block gets one; the stem none.
  CE uses group size 16 (halved until it divides the width); SE defaults to r = 4
  (MobileNetV3's choice for inverted residuals).
* ReZero gates each block that has a residual (stride 1, same width): ``y = x + α·F(x)``.
* No dropout before the classifier (torchvision has 0.2, ``keras.applications`` none).

With ``include_top=False`` the model outputs ``{"C2", "C3", "C4", "C5"}`` at strides 4, 8, 16,
32: the last block of width 24α, 32α and 96α, and the activated top conv (1280 channels); in
``keras.applications.MobileNetV2`` these are ``block_2_add``, ``block_5_add``, ``block_12_add``
and ``out_relu``. Trainable parameters equal ``keras.applications.MobileNetV2`` (3,504,872 at
α = 1, 1000 classes, as torchvision); Keras pads stride-2 convolutions asymmetrically
(top/left 0, bottom/right 1 for even sizes), here symmetrically as PyTorch.
"""

import keras

from keras_cvx.models.backbones import building_blocks as blocks
from keras_cvx.models.backbones.backbone import Backbone
from keras_cvx.validation import require_choice, require_positive

INVERTED_RESIDUALS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
# Index in INVERTED_RESIDUALS of the last group at strides 4, 8, 16 (C2, C3, C4); C5 is the top conv.
FEATURE_GROUPS = (1, 2, 4)
ATTENTION_POSITIONS = ("output", "expanded")


def make_divisible(value, divisor=8):
    """torchvision's rounding: nearest multiple of ``divisor``, never more than 10% below."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@keras.saving.register_keras_serializable(package="keras_cvx")
class MobileNetV2(Backbone):
    """MobileNetV2 ("MobileNetV2: Inverted Residuals and Linear Bottlenecks", Sandler et al.,
    arXiv 1801.04381, table 2) as a ``Backbone``: a classifier or a dict of four feature maps,
    with the blocks of the papers this package implements (SE, CE, Dynamic ReLU, ReZero).

    Args:
        alpha: width multiplier.
        activation: ``"relu6"``, ``"dy_relu_a"``, ``"dy_relu_b"`` or ``"dy_relu_c"``.
        attention: ``None``, ``"se"`` or ``"ce"``.
        rezero: gate every residual block with ReZero's ``α`` (init 0).
        include_top: add pooling and the classifier; otherwise output the feature dict.
        num_classes: classifier width.
        input_shape: ``(H, W, C)``.
        attention_position: ``"output"`` or ``"expanded"`` (see the module docstring).
        se_reduction: SE reduction ``r``.
        dy_relu_reduction: DY-ReLU reduction ``R``.
        classifier_activation: activation of the classifier (``None``: logits).
        name: model name (default e.g. ``"dy_relu_b_mobilenetv2_1.00"``).

    Outputs: logits ``(B, num_classes)``, or ``{"C2": ..., "C5": ...}``.
    """

    def __init__(
        self,
        alpha=1.0,
        activation="relu6",
        attention=None,
        rezero=False,
        include_top=True,
        num_classes=1000,
        input_shape=(224, 224, 3),
        attention_position="output",
        se_reduction=4,
        dy_relu_reduction=4,
        classifier_activation=None,
        name=None,
        **kwargs,
    ):
        arguments = dict(
            alpha=alpha, activation=activation, attention=attention, rezero=rezero, include_top=include_top,
            num_classes=num_classes, input_shape=input_shape, attention_position=attention_position,
            se_reduction=se_reduction, dy_relu_reduction=dy_relu_reduction,
            classifier_activation=classifier_activation,
        )
        inputs, outputs, default_name = _mobilenet_v2_graph(**arguments)
        super().__init__(inputs, outputs, arguments, name=name or default_name, **kwargs)


def _mobilenet_v2_graph(alpha, activation, attention, rezero, include_top, num_classes, input_shape,
                        attention_position, se_reduction, dy_relu_reduction, classifier_activation):
    """``(inputs, outputs, default name)`` of ``MobileNetV2`` (arguments as there)."""
    alpha = require_positive("alpha", alpha)
    options = blocks.BlockOptions(activation, attention, "relu6", se_reduction, dy_relu_reduction)
    require_choice("attention_position", attention_position, ATTENTION_POSITIONS)
    input_shape = blocks.check_input_shape(input_shape)

    inputs = keras.Input(shape=input_shape, name="images")
    x = options.activate(blocks.conv_bn(inputs, make_divisible(32 * alpha), 3, 2, "stem"), "stem_relu")
    features = {}
    block = 0
    for group, (expansion, channels, repeats, first_stride) in enumerate(INVERTED_RESIDUALS):
        out_channels = make_divisible(channels * alpha)
        for index in range(repeats):
            strides = first_stride if index == 0 else 1
            branch = _inverted_residual_branch(x.shape[-1], expansion, out_channels, strides, options, attention_position, f"block{block}")
            if strides == 1 and x.shape[-1] == out_channels:
                if rezero:
                    x = blocks.rezero_residual(x, branch, f"block{block}")
                else:
                    x = keras.layers.Add(name=f"block{block}_add")([x, branch(x)])
            else:
                x = branch(x)
            block += 1
        if group in FEATURE_GROUPS:
            features[blocks.FEATURE_NAMES[FEATURE_GROUPS.index(group)]] = x
    x = blocks.conv_bn(x, make_divisible(1280 * max(1.0, alpha)), 1, 1, "top")
    features["C5"] = options.activate(x, "top_relu")
    prefix = "".join(f"{tag}_" for tag in (attention, None if activation == "relu6" else activation) if tag)
    name = f"{prefix}mobilenetv2_{alpha:.2f}" + ("_rezero" if rezero else "")
    return inputs, blocks.model_outputs(features, include_top, num_classes, classifier_activation), name


def _inverted_residual_branch(in_channels, expansion, out_channels, strides, options, attention_position, name):
    def branch(x):
        if expansion != 1:
            x = options.activate(blocks.conv_bn(x, in_channels * expansion, 1, 1, f"{name}_expand"), f"{name}_expand_relu")
        x = options.activate(blocks.conv_bn(x, None, 3, strides, f"{name}_depthwise", depthwise=True), f"{name}_depthwise_relu")
        if attention_position == "expanded":
            x = options.attend(x, f"{name}_attention")
        x = blocks.conv_bn(x, out_channels, 1, 1, f"{name}_project")
        if attention_position == "output":
            x = options.attend(x, f"{name}_attention")
        return x

    return branch
