"""Parameter and multiply-accumulate (MAC) counts of Functional Keras models, computed
analytically from the layer shapes of the built graph (nothing is run).

Convention (the one the SlimConv README's FLOPs and torchvision's "GFLOPS" use, and that papers
call "MAdds"/"FLOPs"): MACs of convolutions, dense layers and matrix products, at one image
(the batch dimension is dropped); no BatchNorm (foldable into the conv), no activations,
pooling, additions or element-wise rescaling. For one output position:

* ``Conv`` (any rank, grouped): ``k_1·…·k_n · C_in/groups · C_out`` per output position;
  ``DepthwiseConv``: ``k_1·…·k_n · C_in · multiplier``; ``SeparableConv``: both parts;
  ``ConvTranspose``: the kernel size per *input* position.
* ``Dense``: ``C_in · units`` per position of the leading (non-batch) axes.
* keras_cvx blocks (C channels in, H×W positions in, H'×W' out):
  - ``SlimConv2D``: ``2·C·⌊C/r⌋ + (C/2)(C/4)·HW + 9(C/2)²·H'W' + 9(C/4)²·H'W'`` (the
    official ``slim_conv_3x3``'s convolutions);
  - ``SqueezeExcite``: ``2·C·h``, h = max(1, ⌊C/r⌋);
  - ``ChannelEquilibrium``: BD's per-pixel grouped matmul ``C·d·HW`` (d the group size) plus
    IR's ``2·C·h``; at inference BD is a fixed C×C block-diagonal map (134.9 M MACs in
    CE-ResNet-50 with the official ``ResNetV1CE`` placement);
  - ``DynamicReLU``: the hyper function ``C·h + h·n_out`` (n_out = 2K or 2K·C), plus the
    type-C spatial 1×1 conv ``C·HW``;
  - ``ReZero``: its branch (a nested Functional model is counted with its own graph).

``include_elementwise=True`` adds the per-element multiplies of the keras_cvx blocks, which
papers sometimes include (DY-ReLU's "~5%" extra over MobileNetV2 presumably does):
DY-ReLU ``K·C·HW`` (+``C·HW`` for type C's π), SE/CE ``C·HW`` (rescale), SlimConv ``2·C·HW``
(the two reweighted copies), ReZero ``C·HW`` (α·F).

Layers without trainable weights count 0; a layer with trainable weights and no rule raises a
``ValueError`` (register one with ``register_mac_rule``). A layer called several times in a
graph is counted at every call.
"""

import math

import keras

from keras_cvx.layers.channel_equilibrium import ChannelEquilibrium, group_size_for
from keras_cvx.layers.dynamic_relu import DynamicReLU
from keras_cvx.layers.rezero import ReZero
from keras_cvx.layers.slim_conv import SlimConv2D
from keras_cvx.layers.squeeze_excite import SqueezeExcite

_RULES = {}


def register_mac_rule(*layer_classes):
    """Decorator: ``rule(layer, input_shapes, output_shapes, include_elementwise) -> int`` for
    ``layer_classes`` and their subclasses. Shapes are lists of tuples with the batch axis."""

    def register(rule):
        for cls in layer_classes:
            _RULES[cls] = rule
        return rule

    return register


def count_parameters(model):
    """Trainable parameters (PyTorch's count: BN γ/β included, running statistics not)."""
    return int(sum(math.prod(w.shape) for w in model.trainable_weights))


def count_macs(model, include_elementwise=False):
    """MACs of one forward pass for one image (see the module docstring).

    Args:
        model: a Functional (or Sequential) ``keras.Model`` with static spatial sizes.
        include_elementwise: add the element-wise multiplies of the keras_cvx blocks.
    """
    graph = getattr(model, "_functional", None) or model  # a built Sequential wraps a Functional
    if not hasattr(graph, "_nodes_by_depth"):
        raise ValueError(f"`model` must be a Functional or built Sequential keras.Model, got {model!r}.")
    total = 0
    for nodes in graph._nodes_by_depth.values():
        for node in nodes:
            if isinstance(node.operation, keras.layers.InputLayer):
                continue
            total += layer_macs(
                node.operation,
                [tuple(t.shape) for t in node.input_tensors],
                [tuple(t.shape) for t in node.output_tensors],
                include_elementwise,
            )
    return total


def layer_macs(layer, input_shapes, output_shapes, include_elementwise=False):
    """MACs of one call of ``layer`` on inputs of ``input_shapes`` giving ``output_shapes``."""
    if isinstance(layer, keras.Model):
        return count_macs(layer, include_elementwise)
    for cls in type(layer).__mro__:
        if cls in _RULES:
            return int(_RULES[cls](layer, input_shapes, output_shapes, include_elementwise))
    if layer.trainable_weights:
        raise ValueError(
            f"No MAC rule for layer {layer.name!r} ({type(layer).__name__}); register one with `register_mac_rule`."
        )
    return 0


def _positions(shape):
    """Number of positions: the product of the axes between batch and channels."""
    dims = shape[1:-1]
    if any(d is None for d in dims):
        raise ValueError(f"MACs need static spatial sizes, got shape {shape}.")
    return math.prod(dims)


@register_mac_rule(keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
@register_mac_rule(keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
def _conv(layer, input_shapes, output_shapes, include_elementwise):
    kernel = layer.depthwise_kernel if hasattr(layer, "depthwise_kernel") else layer.kernel
    return math.prod(kernel.shape) * _positions(output_shapes[0])


@register_mac_rule(keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
def _separable_conv(layer, input_shapes, output_shapes, include_elementwise):
    per_position = math.prod(layer.depthwise_kernel.shape) + math.prod(layer.pointwise_kernel.shape)
    return per_position * _positions(output_shapes[0])


@register_mac_rule(keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
def _conv_transpose(layer, input_shapes, output_shapes, include_elementwise):
    return math.prod(layer.kernel.shape) * _positions(input_shapes[0])


@register_mac_rule(keras.layers.Dense)
def _dense(layer, input_shapes, output_shapes, include_elementwise):
    return math.prod(layer.kernel.shape) * _positions(input_shapes[0])


@register_mac_rule(keras.layers.BatchNormalization, keras.layers.LayerNormalization, keras.layers.GroupNormalization)
def _normalization(layer, input_shapes, output_shapes, include_elementwise):
    return 0


def _hidden(channels, reduction):
    return max(1, channels // reduction)


@register_mac_rule(SqueezeExcite)
def _squeeze_excite(layer, input_shapes, output_shapes, include_elementwise):
    channels = input_shapes[0][-1]
    rescale = channels * _positions(input_shapes[0]) if include_elementwise else 0
    return 2 * channels * _hidden(channels, layer.reduction) + rescale


@register_mac_rule(ChannelEquilibrium)
def _channel_equilibrium(layer, input_shapes, output_shapes, include_elementwise):
    channels, positions = input_shapes[0][-1], _positions(input_shapes[0])
    decorrelation = channels * group_size_for(channels, layer.group_size) * positions
    rescale = channels * positions if include_elementwise else 0
    return decorrelation + 2 * channels * _hidden(channels, layer.reduction) + rescale


@register_mac_rule(SlimConv2D)
def _slim_conv(layer, input_shapes, output_shapes, include_elementwise):
    channels, positions = input_shapes[0][-1], _positions(input_shapes[0])
    half, quarter, out_positions = channels // 2, channels // 4, _positions(output_shapes[0])
    weights = 2 * channels * _hidden(channels, layer.reduction)
    convs = half * quarter * positions + 9 * (half * half + quarter * quarter) * out_positions
    reweight = 2 * channels * positions if include_elementwise else 0
    return weights + convs + reweight


@register_mac_rule(DynamicReLU)
def _dynamic_relu(layer, input_shapes, output_shapes, include_elementwise):
    channels, positions = input_shapes[0][-1], _positions(input_shapes[0])
    hidden = _hidden(channels, layer.reduction)
    coefficients = 2 * layer.k * (1 if layer.variant == "A" else channels)
    total = channels * hidden + hidden * coefficients
    if layer.variant == "C":
        total += channels * positions
    if include_elementwise:
        total += (layer.k + (layer.variant == "C")) * channels * positions
    return total


@register_mac_rule(ReZero)
def _rezero(layer, input_shapes, output_shapes, include_elementwise):
    branch = layer_macs(layer.layer, input_shapes, output_shapes, include_elementwise)
    return branch + (math.prod(output_shapes[0][1:]) if include_elementwise else 0)
