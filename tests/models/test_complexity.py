import keras
import numpy as np
import pytest

from keras_cvx.layers.channel_equilibrium import ChannelEquilibrium
from keras_cvx.layers.dynamic_relu import DynamicReLU
from keras_cvx.layers.rezero import ReZero
from keras_cvx.layers.slim_conv import SlimConv2D
from keras_cvx.layers.squeeze_excite import SqueezeExcite
from keras_cvx.models.complexity import count_macs, count_parameters, layer_macs, register_mac_rule


def macs_of(layer, shape, include_elementwise=False):
    inputs = keras.Input(shape)
    return count_macs(keras.Model(inputs, layer(inputs)), include_elementwise)


@pytest.mark.parametrize(
    "layer, shape, expected",
    [
        (keras.layers.Conv2D(8, 3), (10, 10, 4), 8 * 8 * 3 * 3 * 4 * 8),
        (keras.layers.Conv2D(8, 3, strides=2, padding="same", groups=2), (10, 10, 4), 5 * 5 * 3 * 3 * 2 * 8),
        (keras.layers.Conv1D(6, 5), (12, 3), 8 * 5 * 3 * 6),
        (keras.layers.Conv3D(2, 2), (3, 3, 3, 1), 8 * 8 * 2),
        (keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same"), (10, 10, 4), 100 * 9 * 4 * 2),
        (keras.layers.SeparableConv2D(6, 3, padding="same"), (10, 10, 4), 100 * (9 * 4 + 4 * 6)),
        (keras.layers.Conv2DTranspose(5, 3, strides=2), (4, 4, 3), 16 * 3 * 3 * 3 * 5),
        (keras.layers.Dense(7), (5, 3), 5 * 3 * 7),
        (keras.layers.Dense(7), (3,), 3 * 7),
        (keras.layers.BatchNormalization(), (4, 4, 3), 0),
        (keras.layers.MaxPooling2D(), (4, 4, 3), 0),
        (keras.layers.ReLU(), (4, 4, 3), 0),
    ],
)
def test_keras_layers(layer, shape, expected):
    assert macs_of(layer, shape) == expected


def test_slim_conv_matches_the_spec_examples():
    """SlimConv spec §2.1: C=64 at 56×56, s=1: 37,732,608; C=128 at 56×56, s=2: 42,550,272."""
    assert macs_of(SlimConv2D(), (56, 56, 64)) == 37_732_608
    assert macs_of(SlimConv2D(strides=2), (56, 56, 128)) == 42_550_272
    assert macs_of(SlimConv2D(), (56, 56, 64), include_elementwise=True) == 37_732_608 + 2 * 64 * 56 * 56


def test_channel_equilibrium_matches_the_spec_overheads():
    """CE spec §5: BD C·d per pixel — stem 64·64·112² = 51.4 M, a stage-1 block 256·16·56² = 12.85 M;
    plus the IR MLP 2·C·C/4."""
    assert macs_of(ChannelEquilibrium(group_size=64), (112, 112, 64)) == 64 * 64 * 112 * 112 + 2 * 64 * 16
    assert macs_of(ChannelEquilibrium(), (56, 56, 256)) == 12_845_056 + 2 * 256 * 64
    # 48 channels: the group size 16 divides 48; 40 channels: halved to 8.
    assert macs_of(ChannelEquilibrium(), (2, 2, 40)) == 40 * 8 * 4 + 2 * 40 * 10


def test_squeeze_excite():
    assert macs_of(SqueezeExcite(reduction=16), (7, 7, 256)) == 2 * 256 * 16
    assert macs_of(SqueezeExcite(reduction=16), (7, 7, 256), include_elementwise=True) == 2 * 256 * 16 + 256 * 49


@pytest.mark.parametrize(
    "variant, expected, elementwise",
    [("A", 64 * 16 + 16 * 4, 2 * 64 * 64), ("B", 64 * 16 + 16 * 256, 2 * 64 * 64), ("C", 64 * 16 + 16 * 256 + 64 * 64, 3 * 64 * 64)],
)
def test_dynamic_relu(variant, expected, elementwise):
    assert macs_of(DynamicReLU(variant=variant, reduction=4), (8, 8, 64)) == expected
    assert macs_of(DynamicReLU(variant=variant, reduction=4), (8, 8, 64), include_elementwise=True) == expected + elementwise


def test_rezero_counts_its_nested_functional_branch():
    branch_input = keras.Input((6, 6, 4))
    branch = keras.Model(branch_input, keras.layers.Conv2D(4, 3, padding="same")(keras.layers.Conv2D(4, 1)(branch_input)))
    expected = 36 * (4 * 4 + 9 * 4 * 4)
    assert macs_of(ReZero(branch), (6, 6, 4)) == expected
    assert macs_of(ReZero(branch), (6, 6, 4), include_elementwise=True) == expected + 36 * 4
    assert macs_of(ReZero(keras.layers.Dense(4)), (6, 6, 4)) == 36 * 16


def test_sequential_shared_layers_and_parameters():
    conv = keras.layers.Conv2D(3, 1, use_bias=False)
    inputs = keras.Input((4, 4, 3))
    shared = keras.Model(inputs, conv(conv(inputs)))
    assert count_macs(shared) == 2 * 16 * 9
    sequential = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(8, 3, use_bias=False), keras.layers.BatchNormalization()])
    assert count_macs(sequential) == 4 * 9 * 3 * 8
    # Kernel + BN γ/β; the BN moving mean/variance are not parameters in PyTorch's count.
    assert count_parameters(sequential) == 9 * 3 * 8 + 2 * 8
    assert sequential.count_params() == count_parameters(sequential) + 2 * 8


def test_errors():
    inputs = keras.Input((3,))
    with pytest.raises(ValueError, match="No MAC rule"):
        count_macs(keras.Model(inputs, keras.layers.Embedding(10, 2)(inputs)))
    images = keras.Input((None, None, 3))
    with pytest.raises(ValueError, match="static spatial"):
        count_macs(keras.Model(images, keras.layers.Conv2D(2, 1)(images)))
    with pytest.raises(ValueError, match="Functional"):
        count_macs(keras.layers.Dense(2))


def test_register_a_rule_for_a_custom_layer():
    class Scaled(keras.layers.Layer):
        def build(self, shape):
            self.scale = self.add_weight(shape=(shape[-1],))

        def call(self, x):
            return x * self.scale

    @register_mac_rule(Scaled)
    def scaled(layer, input_shapes, output_shapes, include_elementwise):
        return int(np.prod(input_shapes[0][1:]))

    assert macs_of(Scaled(), (4, 5)) == 20
    assert layer_macs(Scaled(), [(None, 2, 3)], [(None, 2, 3)]) == 6
