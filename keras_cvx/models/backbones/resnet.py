"""ResNet with pluggable blocks: SE / Channel Equilibrium attention, Dynamic ReLU, SlimConv and
ReZero.

Papers:
* "Deep Residual Learning for Image Recognition", K. He et al., CVPR 2016, arXiv 1512.03385
  (the backbone; torchvision's layout, "ResNet v1.5": the stride of a bottleneck sits on its
  3×3 convolution).
* "Squeeze-and-Excitation Networks", J. Hu et al., arXiv 1709.01507 — ``attention="se"``.
* "Channel Equilibrium Networks for Learning Deep Representation", W. Shao et al., ICML 2020,
  arXiv 2003.00214 — ``attention="ce"``.
* "Dynamic ReLU", Y. Chen et al., ECCV 2020, arXiv 2003.10027 — ``activation="dy_relu_*"``.
* "SlimConv: Reducing Channel Redundancy in Convolutional Neural Networks by Weights
  Flipping", J. Qiu et al., arXiv 2003.07469 — ``conv="slim"``.
* "ReZero is All You Need: Fast Convergence at Large Depth", T. Bachlechner et al.,
  arXiv 2003.04887 — ``rezero=True``.

Blocks (``act`` is ReLU or one DY-ReLU layer per place, ``att`` the attention block)::

    stem (imagenet): pad 3, conv7×7/2 → BN → [att(stem)] → act → pad 1, maxpool 3×3/2
    stem (small):    conv3×3/1 → BN → [att(stem)] → act                  (32×32 CIFAR images)
    stem (small_stride2): conv3×3/2 (pad 1) → BN → [att(stem)] → act     (28×28 digits)
    bottleneck:      y = act( shortcut(x) + att( BN(conv1×1( act(BN(conv3×3/s( act(BN(conv1×1(x)))))) )) ) )
      conv="slim":   the 3×3 conv and its BN become SlimConv2D(stride s), whose output has 3w/4
                     channels, so the last 1×1 conv reads 3w/4 channels (official SC-ResNet).
    basic:           y = act( shortcut(x) + att( BN(conv3×3( act(BN(conv3×3/s(x))) )) ) )
    shortcut:        x, or BN(conv1×1/s(x)) when the stride or the width changes.

Placements from the papers and their official code: SE (r = 16, with biases) after the last BN of every block, before
the add (SE-ResNet). CE after the last BN before the add in stages 1–3 (group size 16) and
after the stem BN (group size 64); stage 4 has none (official ``ResNetV1CE``). DY-ReLU
replaces every ReLU: stem, inside the blocks and after the add (our reading of the paper,
which does not list the places). SlimConv
only exists for bottleneck blocks (the official code has no basic-block version).
ReZero follows the authors' ReZNet (ReZero-examples, ``ReZNet-6x_faster_ResNet_training_via_
ReZero.ipynb``): every block, identity and down-sampling alike, becomes
``y = shortcut(x) + α·act(BN(...))`` with one scalar ``α`` (init 0), the last activation moved
into the branch and none after the add (``rezero_branch_activation=True``), or with the
activation kept after the add (``False``). ResNet-50 has 16 gates (16 extra parameters); at
initialisation each block is its shortcut, so the network is the stem followed by the four
projection shortcuts (``BN(conv1×1/s)``) and nothing else. Difference from the notebook: its
CIFAR ResNets use the parameter-free option-A shortcut (stride-2 subsampling + zero channel
padding); here the shortcut stays the ImageNet ResNet's projection ``BN(conv1×1/s)``, computed
outside the gate. ReZero keeps the BatchNorms, as the authors' ResNets.

Parameter counts (trainable, PyTorch's convention: BN γ/β counted, running statistics not)
equal the reference code: ResNet-50 25,557,032; SE-ResNet-50 28,088,024; CE-ResNet-50
29,331,926; SC-ResNet-50 16,758,740; SC-ResNet-101 27,956,708.

``stride_in_1x1=True`` moves the bottleneck stride onto the first 1×1 convolution (the MSRA
"v1" layout that ``keras.applications.ResNet50`` uses, 3.86 GMACs instead of 4.09 G). With it,
and the layer names used here (``conv1_conv``, ``conv2_block1_1_conv``, ... as Keras), weights
of ``keras.applications.ResNet50/101/152`` port one to one (``convert_keras_resnet_weights``):
Keras's conv biases fold into the BN moving means and its BN ε = 1.001e-5 into the moving
variances. ``weights="imagenet"`` does that with the downloaded ImageNet weights; it needs the
architecture Keras has (depth 50/101/152, ``stride_in_1x1=True``, ``base_width`` 64, the
ImageNet stem, 3 input channels, no attention/DY-ReLU/SlimConv/ReZero, 1000 classes with the
classifier) and raises a ``ValueError`` naming the first argument that differs. The converted
model takes RGB images minus the ImageNet mean (123.68, 116.779, 103.939), no scaling: conv1's
input channels are reversed from Keras's BGR (``keras.applications.resnet.preprocess_input``
gives BGR; reverse its channels, or pass ``rgb_input=False`` to the converter).

Example::

    model = ResNet(50)                                        # torchvision layout, random init
    features = ResNet(18, include_top=False, input_shape=(224, 224, 3))   # {"C2": ..., "C5": ...}
    # ResNet(50, stride_in_1x1=True, weights="imagenet") downloads keras.applications' weights

Padding and PyTorch: strided 3×3/7×7 convolutions pad symmetrically (see ``building_blocks``).
The stem max-pool pads with zeros as Keras applications do; PyTorch pads with −∞, which is the
same after a ReLU (outputs ≥ 0) but can differ at the border after a DY-ReLU (negative outputs).
"""

import keras

from keras_cvx.layers.slim_conv import SlimConv2D
from keras_cvx.models.backbones.backbone import Backbone
from keras_cvx.models.backbones.building_blocks import (
    FEATURE_NAMES,
    BlockOptions,
    check_input_shape,
    conv_bn,
    model_outputs,
    rezero_residual,
)
from keras_cvx.validation import require_choice, require_positive_int

# depth -> (block type, blocks per stage). 10 and 14/26 are the small ResNets of the DY-ReLU
# paper (ResNet-10, basic) and timm (resnet14t/resnet26, bottleneck), used for quick studies.
STAGE_BLOCKS = {
    10: ("basic", (1, 1, 1, 1)),
    14: ("bottleneck", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    26: ("bottleneck", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
CONVS = ("standard", "slim")
STEMS = ("imagenet", "small", "small_stride2")
# Stages with the attention block by default (0 is the stem).
DEFAULT_ATTENTION_STAGES = {"se": (1, 2, 3, 4), "ce": (0, 1, 2, 3)}


@keras.saving.register_keras_serializable(package="keras_cvx")
class ResNet(Backbone):
    """A ResNet ("Deep Residual Learning for Image Recognition", He et al., arXiv 1512.03385,
    table 1) as a ``Backbone``: a classifier or a dict of the four stage outputs, with the
    blocks of the papers this package implements (SE, CE, Dynamic ReLU, SlimConv, ReZero).

    Args:
        depth: 10, 14, 18, 26, 34, 50, 101 or 152 (see ``STAGE_BLOCKS``).
        attention: ``None``, ``"se"`` or ``"ce"``.
        activation: ``"relu"``, ``"dy_relu_a"``, ``"dy_relu_b"`` or ``"dy_relu_c"``.
        conv: ``"standard"`` or ``"slim"`` (SlimConv, bottleneck depths only).
        rezero: gate the residual branch of every block with ReZero's ``α`` (init 0).
        include_top: add global average pooling and the classifier; otherwise the model
            outputs a dict ``{"C2": ..., "C5": ...}`` of the four stage outputs.
        num_classes: classifier width.
        input_shape: ``(H, W, C)``; ``H``/``W`` may be ``None`` (static sizes are preferred).
        base_width: width of the first stage (64 as published); stages use 1, 2, 4, 8 times it
            (bottleneck outputs 4 times that). SlimConv needs a multiple of 4 that is ≥ 32.
        stem: ``"imagenet"`` (7×7/2 conv + 3×3/2 max-pool, feature strides 4, 8, 16, 32),
            ``"small"`` (3×3/1 conv, no pooling, strides 1, 2, 4, 8; CIFAR-style 32×32 images)
            or ``"small_stride2"`` (3×3/2 conv, no pooling, strides 2, 4, 8, 16; 28×28 digits
            at a quarter of the cost of ``"small"``). The feature names stay ``"C2"``–``"C5"``
            (the outputs of stages 1–4) whatever the stem.
        stride_in_1x1: put a bottleneck's stride on its first 1×1 conv (MSRA / Keras layout).
        attention_stages: stages (0 = stem, 1–4) that get the attention block; ``None`` uses
            the papers' choice: SE ``(1, 2, 3, 4)``, CE ``(0, 1, 2, 3)``.
        se_reduction: SE reduction ``r`` (16 in SE-ResNet).
        dy_relu_reduction: DY-ReLU reduction ``R`` (4).
        rezero_branch_activation: with ``rezero``, move the block's last activation into the
            branch and drop the one after the add (the authors' ReZNet).
        classifier_activation: activation of the classifier (``None``: logits).
        name: model name (default e.g. ``"ce_resnet50"``).
        weights: ``None`` (default, random initialisation) or ``"imagenet"``: the weights of
            ``keras.applications.ResNet{depth}`` (downloaded by Keras), for the architectures
            that match it (module docstring); the model then takes RGB minus the ImageNet mean.

    Outputs: logits ``(B, num_classes)``, or the feature dict.
    """

    def __init__(
        self,
        depth=50,
        attention=None,
        activation="relu",
        conv="standard",
        rezero=False,
        include_top=True,
        num_classes=1000,
        input_shape=(224, 224, 3),
        base_width=64,
        stem="imagenet",
        stride_in_1x1=False,
        attention_stages=None,
        se_reduction=16,
        dy_relu_reduction=4,
        rezero_branch_activation=True,
        classifier_activation=None,
        name=None,
        weights=None,
        **kwargs,
    ):
        arguments = dict(
            depth=depth, attention=attention, activation=activation, conv=conv, rezero=rezero,
            include_top=include_top, num_classes=num_classes, input_shape=input_shape, base_width=base_width,
            stem=stem, stride_in_1x1=stride_in_1x1, attention_stages=attention_stages, se_reduction=se_reduction,
            dy_relu_reduction=dy_relu_reduction, rezero_branch_activation=rezero_branch_activation,
            classifier_activation=classifier_activation,
        )
        inputs, outputs, default_name = _resnet_graph(weights=weights, **arguments)
        super().__init__(inputs, outputs, arguments, name=name or default_name, **kwargs)
        if weights == "imagenet":
            application = getattr(keras.applications, KERAS_RESNETS[depth])
            convert_keras_resnet_weights(application(include_top=include_top, weights="imagenet"), self)


def _resnet_graph(depth, attention, activation, conv, rezero, include_top, num_classes, input_shape, base_width,
                  stem, stride_in_1x1, attention_stages, se_reduction, dy_relu_reduction, rezero_branch_activation,
                  classifier_activation, weights):
    """``(inputs, outputs, default name)`` of ``ResNet`` (arguments as there)."""
    block_type, blocks = STAGE_BLOCKS[require_choice("depth", depth, tuple(STAGE_BLOCKS))]
    options = BlockOptions(activation, attention, "relu", se_reduction, dy_relu_reduction)
    require_choice("conv", conv, CONVS)
    require_choice("stem", stem, STEMS)
    require_positive_int("base_width", base_width)
    input_shape = check_input_shape(input_shape)
    if conv == "slim":
        if block_type != "bottleneck":
            raise ValueError(f"`conv`='slim' needs bottleneck blocks (depth 14, 26, 50, 101, 152), got depth={depth}.")
        if base_width % 4 or base_width < 32:
            raise ValueError(f"`conv`='slim' needs `base_width` a multiple of 4 and >= 32, got {base_width}.")
    stages = _attention_stages(attention, attention_stages)
    if weights not in WEIGHTS:
        raise ValueError(f"`weights` must be one of {list(WEIGHTS)}, got {weights!r}.")
    if weights == "imagenet":
        _check_keras_architecture(
            depth=depth, stride_in_1x1=stride_in_1x1, base_width=base_width, stem=stem, attention=attention,
            activation=activation, conv=conv, rezero=rezero, channels=input_shape[-1],
            num_classes=num_classes if include_top else 1000,
        )

    inputs = keras.Input(shape=input_shape, name="images")
    x = _stem(inputs, base_width, stem, options, 0 in stages)
    features = {}
    for stage, count in enumerate(blocks):
        width = base_width * 2**stage
        for index in range(count):
            block_name = f"conv{stage + 2}_block{index + 1}"
            strides = 2 if stage > 0 and index == 0 else 1
            if block_type == "bottleneck":
                branch = _bottleneck_branch(width, strides, conv, stride_in_1x1, block_name)
                out_channels = 4 * width
            else:
                branch = _basic_branch(width, strides, block_name)
                out_channels = width
            x = _residual_block(
                x, branch, out_channels, strides, options, stage + 1 in stages, rezero, rezero_branch_activation, block_name
            )
        features[FEATURE_NAMES[stage]] = x
    prefix = "".join(f"{tag}_" for tag in (attention, {"slim": "sc"}.get(conv), _short(activation)) if tag)
    name = f"{prefix}resnet{depth}" + ("_rezero" if rezero else "")
    return inputs, model_outputs(features, include_top, num_classes, classifier_activation), name


WEIGHTS = (None, "imagenet")
KERAS_RESNETS = {50: "ResNet50", 101: "ResNet101", 152: "ResNet152"}
"""Depths with a ``keras.applications`` ResNet (v1, ImageNet weights)."""
_KERAS_ARCHITECTURE = {
    "stride_in_1x1": True, "base_width": 64, "stem": "imagenet", "attention": None, "activation": "relu",
    "conv": "standard", "rezero": False, "channels": 3, "num_classes": 1000,
}
_KERAS_BN_EPSILON = 1.001e-5


def _check_keras_architecture(depth, **options):
    if depth not in KERAS_RESNETS:
        raise ValueError(f"`weights`='imagenet' needs `depth` in {sorted(KERAS_RESNETS)} (keras.applications), got {depth}.")
    for argument, value in options.items():
        if value != _KERAS_ARCHITECTURE[argument]:
            raise ValueError(
                f"`weights`='imagenet' needs the architecture of keras.applications.{KERAS_RESNETS[depth]}: "
                f"`{argument}`={_KERAS_ARCHITECTURE[argument]!r}, got {value!r}."
            )


def convert_keras_resnet_weights(source, model, rgb_input=True):
    """Copies a ``keras.applications`` ResNet (v1: ``ResNet50``/``101``/``152``) into ``model``,
    a ``ResNet(depth, stride_in_1x1=True)`` of the same depth, layer by layer name.

    Keras's convolutions have biases and its BatchNorms ε = 1.001e-5; ours have no conv bias
    and ε = 1e-5. With ``BN(conv(x) + b) = γ (conv(x) + b − μ) / √(σ² + ε') + β`` the bias folds
    into the moving mean (``μ − b``) and the ε difference into the moving variance
    (``σ² + ε' − ε``), so the converted model computes the same function. The classifier
    (``predictions``) is copied when both models have it.

    Args:
        source: the ``keras.applications`` model (any input size, with or without top).
        model: the target ``ResNet``.
        rgb_input: reverse conv1's input channels so that ``model`` takes RGB where ``source``
            takes BGR (default True).

    Returns: ``model``.

    Example::

        source = keras.applications.ResNet50(weights=None)                  # or weights="imagenet"
        model = convert_keras_resnet_weights(source, ResNet(50, stride_in_1x1=True))
    """
    source_names = {layer.name for layer in source.layers}
    for layer in model.layers:
        if not layer.weights or (layer.name == "predictions" and "predictions" not in source_names):
            continue
        if layer.name not in source_names:
            raise ValueError(
                f"`source` ({source.name!r}) has no layer {layer.name!r}: `model` must be "
                "ResNet(depth, stride_in_1x1=True) without attention, DY-ReLU, SlimConv or ReZero."
            )
        weights = source.get_layer(layer.name).get_weights()
        if isinstance(layer, keras.layers.BatchNormalization):
            bias = source.get_layer(layer.name[: -len("bn")] + "conv").get_weights()[1]
            gamma, beta, mean, variance = weights
            weights = [gamma, beta, mean - bias, variance + (_KERAS_BN_EPSILON - layer.epsilon)]
        elif isinstance(layer, keras.layers.Conv2D):
            weights = weights[:1]
            if rgb_input and layer.name == "conv1_conv":
                weights = [weights[0][:, :, ::-1, :]]
        layer.set_weights(weights)
    return model


def _short(activation):
    return None if activation == "relu" else activation


def _attention_stages(attention, attention_stages):
    if attention is None:
        return ()
    if attention_stages is None:
        return DEFAULT_ATTENTION_STAGES[attention]
    stages = tuple(attention_stages)
    if any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= 4 for s in stages):
        raise ValueError(f"`attention_stages` must hold stage indices 0 (stem) to 4, got {attention_stages!r}.")
    return stages


def _stem(x, width, stem, options, attend):
    if stem == "imagenet":
        x = conv_bn(x, width, 7, 2, "conv1")
    else:
        x = conv_bn(x, width, 3, 2 if stem == "small_stride2" else 1, "conv1")
    if attend:
        x = options.attend(x, "conv1_attention", ce_group_size=64)
    x = options.activate(x, "conv1_relu")
    if stem == "imagenet":
        x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
        x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    return x


def _bottleneck_branch(width, strides, conv, stride_in_1x1, name):
    """conv1×1 → BN → act → (conv3×3 → BN | SlimConv) → act → conv1×1 → BN; a function of
    (x, options) returning the pre-attention tensor."""
    first_strides, middle_strides = (strides, 1) if stride_in_1x1 else (1, strides)

    def branch(x, options):
        x = options.activate(conv_bn(x, width, 1, first_strides, f"{name}_1"), f"{name}_1_relu")
        if conv == "slim":
            x = SlimConv2D(strides=middle_strides, name=f"{name}_2_slim")(x)
        else:
            x = conv_bn(x, width, 3, middle_strides, f"{name}_2")
        x = options.activate(x, f"{name}_2_relu")
        return conv_bn(x, 4 * width, 1, 1, f"{name}_3")

    return branch


def _basic_branch(width, strides, name):
    """conv3×3/s → BN → act → conv3×3 → BN."""

    def branch(x, options):
        x = options.activate(conv_bn(x, width, 3, strides, f"{name}_1"), f"{name}_1_relu")
        return conv_bn(x, width, 3, 1, f"{name}_2")

    return branch


def _residual_block(x, branch, out_channels, strides, options, attend, rezero, branch_activation, name):
    activation_in_branch = rezero and branch_activation

    def full_branch(h):
        h = branch(h, options)
        if attend:
            h = options.attend(h, f"{name}_attention")
        if activation_in_branch:
            h = options.activate(h, f"{name}_branch_relu")
        return h

    projection = strides != 1 or x.shape[-1] != out_channels
    shortcut = conv_bn(x, out_channels, 1, strides, f"{name}_0") if projection else None
    if rezero:
        x = rezero_residual(x, full_branch, name, shortcut=shortcut)
    else:
        x = keras.layers.Add(name=f"{name}_add")([x if shortcut is None else shortcut, full_branch(x)])
    if not activation_in_branch:
        x = options.activate(x, f"{name}_out")
    return x
