import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.layers.channel_equilibrium import ChannelEquilibrium
from keras_cvx.layers.dynamic_relu import DynamicReLU
from keras_cvx.layers.rezero import ReZero
from keras_cvx.layers.slim_conv import SlimConv2D
from keras_cvx.layers.squeeze_excite import SqueezeExcite
from keras_cvx.models.backbones.resnet import ResNet, convert_keras_resnet_weights
from keras_cvx.models.complexity import count_macs, count_parameters
from tests.models.backbones.helpers import assert_keras_round_trip, covers_every_pair, layers_of, pairwise_rows

pytestmark = pytest.mark.single_backend

# Reference counts (trainable parameters as PyTorch counts them) from the specs.
RESNET50 = 25_557_032
RESNET18 = 11_689_512


@pytest.fixture(scope="module")
def resnet50():
    return ResNet(50)


@pytest.fixture(scope="module")
def sc_resnet50():
    return ResNet(50, conv="slim")


def test_resnet50_matches_torchvision_count(resnet50):
    assert count_parameters(resnet50) == RESNET50
    assert resnet50.output.shape == (None, 1000)
    assert resnet50.name == "resnet50"


def test_sc_resnet50_count_and_macs(sc_resnet50):
    """SlimConv spec §5: 16,758,740 parameters, 2.652 GMACs (README: 16.76M, 2.65 G)."""
    assert count_parameters(sc_resnet50) == 16_758_740
    assert len(layers_of(sc_resnet50, SlimConv2D)) == 16
    assert round(count_macs(sc_resnet50) / 1e9, 3) == 2.652


def test_sc_resnet101_count():
    assert count_parameters(ResNet(101, conv="slim")) == 27_956_708


def test_ce_resnet50_count_and_placement():
    """CE spec §5: C²/2 + C/2 + 1 per CE block: stem (C=64) and stages 1-3, none in stage 4."""
    model = ResNet(50, attention="ce")
    assert count_parameters(model) == 29_331_926
    ce = layers_of(model, ChannelEquilibrium)
    assert len(ce) == 1 + 3 + 4 + 6
    assert ce[0].name == "conv1_attention" and ce[0].group_size == 64
    assert all(layer.group_size == 16 for layer in ce[1:])
    assert not [layer for layer in ce if layer.name.startswith("conv5")]


def test_se_resnet50_count():
    """SE r=16 with biases in all 16 blocks adds 2,530,992 (SE-ResNet-50: 28,088,024)."""
    model = ResNet(50, attention="se")
    assert count_parameters(model) == RESNET50 + 2_530_992 == 28_088_024
    assert len(layers_of(model, SqueezeExcite)) == 16


def test_dy_relu_resnet18_replaces_all_17_relus():
    """Type B, R=4, K=2: 1.25·C² + 4.25·C per layer (DY-ReLU spec §5)."""
    model = ResNet(18, activation="dy_relu_b")
    widths = [64] * 5 + [128] * 4 + [256] * 4 + [512] * 4
    assert sorted(layer.channels for layer in layers_of(model, DynamicReLU)) == widths
    extra = sum(int(1.25 * c * c + 4.25 * c) for c in widths)
    assert extra == 1_762_512
    assert count_parameters(model) == RESNET18 + extra
    assert not layers_of(model, keras.layers.ReLU)


def test_rezero_gates_all_16_blocks_of_resnet50():
    """ReZNet gates every block, the four down-sampling (projection) blocks included."""
    model = ResNet(50, rezero=True)
    gates = layers_of(model, ReZero)
    assert len(gates) == 16
    assert count_parameters(model) == RESNET50 + 16
    assert all(float(ops.convert_to_numpy(g.alpha)) == 0.0 for g in gates)
    # the first block of each stage sums the gated branch onto its projection BN(conv1x1/s(x))
    for stage in (2, 3, 4, 5):
        node = model.get_layer(f"conv{stage}_block1_rezero")._inbound_nodes[0]
        shortcut = node.arguments.kwargs["shortcut"]
        assert shortcut._keras_history.operation.name == f"conv{stage}_block1_0_bn"
    assert not [layer for layer in model.layers if layer.name.endswith("_add")]


def tiny(depth, **kwargs):
    """The small configuration every tiny test shares (same shapes, so JAX compiles once)."""
    kwargs = {"base_width": 32, "stem": "small", "input_shape": (16, 16, 3), "num_classes": 5, **kwargs}
    return ResNet(depth, **kwargs)


def images(seed, size=16):
    return np.random.default_rng(seed).normal(size=(2, size, size, 3)).astype("float32")


def test_rezero_blocks_are_identity_at_init():
    model = tiny(10, rezero=True)
    probe = keras.Model(model.input, [model.get_layer("conv1_relu").output, model.get_layer("conv2_block1_rezero").output])
    before, after = (ops.convert_to_numpy(t) for t in probe(images(0), training=True))
    np.testing.assert_array_equal(after, before)


def numpy_projection(x, model, name):
    """BN(conv1×1/s(x)) at inference, from the layer weights (the stride samples 0, s, 2s, ...)."""
    conv, bn = model.get_layer(f"{name}_0_conv"), model.get_layer(f"{name}_0_bn")
    stride = conv.strides[0]
    kernel = ops.convert_to_numpy(conv.kernel).astype(np.float64)[0, 0]
    gamma, beta, mean, variance = (ops.convert_to_numpy(w).astype(np.float64) for w in bn.weights)
    y = x[:, ::stride, ::stride, :] @ kernel
    return gamma * (y - mean) / np.sqrt(variance + bn.epsilon) + beta


@pytest.mark.parametrize("depth", [10, 26])
def test_rezero_resnet_is_the_projection_only_function_at_init(depth):
    """α = 0 everywhere: every identity block is the identity and every down-sampling block
    its projection, so C2..C5 are the stem output pushed through the projections alone."""
    model = tiny(depth, include_top=False, rezero=True)
    rng = np.random.default_rng(8)
    for layer in model.layers:  # non-trivial BN statistics so the projections are not near-identity
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.3, c), rng.normal(0, 0.3, c), rng.uniform(0.5, 2, c)])
    x = images(9)
    stem = ops.convert_to_numpy(keras.Model(model.input, model.get_layer("conv1_relu").output)(x)).astype(np.float64)
    features = {k: ops.convert_to_numpy(v) for k, v in model(x, training=False).items()}
    expected = stem
    for stage, key in zip((2, 3, 4, 5), ("C2", "C3", "C4", "C5")):
        if f"conv{stage}_block1_0_conv" in [layer.name for layer in model.layers]:
            expected = numpy_projection(expected, model, f"conv{stage}_block1")
        np.testing.assert_allclose(features[key], expected, rtol=1e-4, atol=1e-4)
    assert len(layers_of(model, ReZero)) == {10: 4, 26: 8}[depth]


def test_rezero_post_activation_variant_keeps_relu_after_add():
    model = tiny(10, rezero=True, rezero_branch_activation=False)
    assert isinstance(model.get_layer("conv2_block1_out"), keras.layers.ReLU)
    branch = model.get_layer("conv2_block1_rezero").layer
    assert not [layer for layer in branch.layers if layer.name.endswith("branch_relu")]


@pytest.mark.parametrize(
    "stem, size, strides", [("imagenet", 64, (4, 8, 16, 32)), ("small", 16, (1, 2, 4, 8)), ("small_stride2", 32, (2, 4, 8, 16))]
)
@pytest.mark.parametrize("depth, expansion", [(10, 1), (14, 4)])
def test_feature_shapes_per_stride(stem, size, strides, depth, expansion):
    model = tiny(depth, include_top=False, stem=stem, input_shape=(size, size, 3))
    outputs = model(images(1, size))
    assert sorted(outputs) == ["C2", "C3", "C4", "C5"]
    for index, (key, stride) in enumerate(zip(["C2", "C3", "C4", "C5"], strides)):
        side = -(-size // stride)
        assert tuple(outputs[key].shape) == (2, side, side, expansion * 32 * 2**index)


ATTENTIONS = [None, "se", "ce"]
ACTIVATIONS = ["relu", "dy_relu_a", "dy_relu_b", "dy_relu_c"]
CONVS = ["standard", "slim"]
# Bottleneck blocks (depth 26: identity and projection blocks in every stage): every pair of
# option values is built (a covering array, 12 models instead of the 48 of the full product).
# Basic blocks (depth 10, no SlimConv): every value of each option.
PAIRWISE = pairwise_rows(ATTENTIONS, ACTIVATIONS, CONVS, [False, True])
COMBINATIONS = [(26, *row) for row in PAIRWISE]
COMBINATIONS += [(10, ATTENTIONS[j % 3], ACTIVATIONS[j], "standard", j % 2 == 1) for j in range(4)]


def test_combinations_cover_every_pair_of_options():
    assert covers_every_pair(PAIRWISE, [ATTENTIONS, ACTIVATIONS, CONVS, [False, True]])


@pytest.mark.parametrize("depth, attention, activation, conv, rezero", COMBINATIONS)
def test_every_option_combination_is_finite(depth, attention, activation, conv, rezero):
    model = tiny(depth, attention=attention, activation=activation, conv=conv, rezero=rezero)
    logits = ops.convert_to_numpy(model(images(1), training=True))
    assert logits.shape == (2, 5)
    assert np.all(np.isfinite(logits))


def test_keras_round_trip_of_a_tiny_model_with_every_block():
    model = tiny(14, attention="ce", activation="dy_relu_c", conv="slim", rezero=True)
    restored = assert_keras_round_trip(model, images(2))
    assert count_parameters(restored) == count_parameters(model)


def test_feature_dict_round_trip():
    restored = assert_keras_round_trip(tiny(26, include_top=False, rezero=True), images(3))
    assert sorted(restored.output) == ["C2", "C3", "C4", "C5"]


def test_mixed_precision_gives_finite_float32_logits():
    keras.config.set_dtype_policy("mixed_float16")
    model = tiny(14, attention="ce", activation="dy_relu_c", conv="slim", rezero=True)
    assert all(w.dtype == "float32" for w in model.weights)
    for training in (True, False):
        logits = model(images(4), training=training)
        assert keras.backend.standardize_dtype(logits.dtype) == "float32"
        assert np.all(np.isfinite(ops.convert_to_numpy(logits)))
    features = tiny(14, include_top=False, conv="slim")(images(4))
    assert keras.backend.standardize_dtype(features["C5"].dtype) == "float16"


def randomise_keras_statistics(reference, seed):
    """Random BN statistics and conv biases, so the bias/ε folding is exercised."""
    rng = np.random.default_rng(seed)
    for layer in reference.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.0, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c), rng.uniform(0.5, 2.0, c)])
        elif isinstance(layer, keras.layers.Conv2D):
            layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape))
    return rng


def test_equals_keras_applications_resnet50_with_converted_weights():
    """keras.applications.ResNet50 strides in the first 1×1 conv ("v1"); with
    ``stride_in_1x1=True`` and converted weights the logits agree, on BGR input for Keras and
    the same image in RGB for ours (``rgb_input=True``) or BGR (``rgb_input=False``). Keras's
    conv biases are the only extra parameters (26,560)."""
    reference = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=7, classifier_activation=None)
    rng = randomise_keras_statistics(reference, 5)
    model = ResNet(50, stride_in_1x1=True, input_shape=(64, 64, 3), num_classes=7)
    conv_biases = sum(layer.filters for layer in reference.layers if isinstance(layer, keras.layers.Conv2D))
    assert conv_biases == 26_560
    assert count_parameters(reference) == count_parameters(model) + conv_biases
    assert count_macs(reference) == count_macs(model)
    bgr = rng.normal(size=(2, 64, 64, 3)).astype("float32")
    expected = ops.convert_to_numpy(reference(bgr))
    convert_keras_resnet_weights(reference, model)
    actual = ops.convert_to_numpy(model(bgr[..., ::-1]))
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    convert_keras_resnet_weights(reference, model, rgb_input=False)
    actual = ops.convert_to_numpy(model(bgr))
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.tensorflow_only
def test_imagenet_weights_come_from_keras_applications(monkeypatch):
    reference = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3))
    randomise_keras_statistics(reference, 6)
    calls = []

    def fake_resnet50(**kwargs):
        calls.append(kwargs)
        return reference

    monkeypatch.setattr(keras.applications, "ResNet50", fake_resnet50)
    model = ResNet(50, stride_in_1x1=True, include_top=False, input_shape=(64, 64, 3), weights="imagenet")
    assert calls == [{"include_top": False, "weights": "imagenet"}]
    x = np.random.default_rng(7).normal(size=(1, 64, 64, 3)).astype("float32")
    expected = ops.convert_to_numpy(reference(x[..., ::-1]))
    actual = ops.convert_to_numpy(model(x)["C5"])
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"depth": 34}, "depth"),
        ({"stride_in_1x1": False}, "stride_in_1x1"),
        ({"rezero": True}, "rezero"),
        ({"attention": "se"}, "attention"),
        ({"base_width": 32}, "base_width"),
        ({"num_classes": 10}, "num_classes"),
        ({"input_shape": (64, 64, 1)}, "channels"),
        ({"weights": "resnet50.h5"}, "weights"),
    ],
)
def test_imagenet_weights_need_the_keras_architecture(kwargs, argument):
    arguments = {"depth": 50, "stride_in_1x1": True, "weights": "imagenet", "input_shape": (64, 64, 3), **kwargs}
    with pytest.raises(ValueError, match=argument):
        ResNet(**arguments)


def test_default_stride_placement_differs_from_keras(resnet50):
    """torchvision ("v1.5") puts the stride on the 3×3 conv: 4.089 vs 3.858 GMACs."""
    assert round(count_macs(resnet50) / 1e9, 3) == 4.089
    assert resnet50.get_layer("conv3_block1_2_conv").strides == (2, 2)
    assert resnet50.get_layer("conv3_block1_1_conv").strides == (1, 1)
    assert isinstance(resnet50.get_layer("conv3_block1_2_pad"), keras.layers.ZeroPadding2D)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"depth": 20}, "depth"),
        ({"attention": "cbam"}, "attention"),
        ({"activation": "gelu"}, "activation"),
        ({"conv": "ghost"}, "conv"),
        ({"depth": 18, "conv": "slim"}, "conv"),
        ({"depth": 14, "conv": "slim", "base_width": 16}, "base_width"),
        ({"stem": "cifar"}, "stem"),
        ({"attention": "se", "attention_stages": (5,)}, "attention_stages"),
        ({"input_shape": (224, 224)}, "input_shape"),
        ({"num_classes": 0}, "num_classes"),
        ({"base_width": 0}, "base_width"),
        ({"dy_relu_reduction": 0, "activation": "dy_relu_b"}, "dy_relu_reduction"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**{"depth": 10, **kwargs})
