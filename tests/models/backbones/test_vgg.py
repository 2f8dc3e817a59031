import os
import tempfile

import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.layers.neighbor_erasing import NeighborErasing
from keras_cvx.layers.neighbor_transferring import NeighborTransferring
from keras_cvx.layers.nn_fusion import NearestNeighborFusion
from keras_cvx.models.backbones.vgg import VGG16SSD, scaled_channels

pytestmark = pytest.mark.single_backend

CHANNELS = {"conv3_3": 256, "p1": 512, "p2": 1024, "p3": 512, "p4": 256, "p5": 256, "p6": 256, "p7": 256}
SIZES = {300: (75, 38, 19, 10, 5, 3, 1), 512: (128, 64, 32, 16, 8, 4, 2, 1)}  # SSD300: no p7


def expected_shapes(image_size, width_multiplier=1.0):
    return {
        name: (size, size, scaled_channels(CHANNELS[name], width_multiplier))
        for name, size in zip(CHANNELS, SIZES[image_size])
    }


TINY = 1 / 32


@pytest.fixture(scope="module")
def full_width():
    """The paper-width models, built once (zero init: random init of 23M weights is slow under
    JAX) and never run."""
    return {size: VGG16SSD(size, kernel_initializer="zeros") for size in (300, 512)}


@pytest.fixture(scope="module")
def tiny_300():
    return VGG16SSD(300, width_multiplier=TINY, name="tiny")


def _images(seed, batch=1, size=300):
    return np.random.default_rng(seed).normal(scale=50.0, size=(batch, size, size, 3)).astype("float32")


@pytest.mark.parametrize("size, extras", [(300, 2_459_520), (512, 3_016_960)])
def test_full_width_shapes_and_parameter_counts(full_width, size, extras):
    model = full_width[size]
    assert model.input.shape == (None, size, size, 3)
    assert {k: tuple(v.shape[1:]) for k, v in model.output.items()} == expected_shapes(size)
    trunk = keras.Model(model.input, [model.output["p1"], model.output["p2"]])
    # VGG16 convs + conv6 (3x3 dilated) + conv7 (1x1) + L2Norm γ (spec §9)
    assert trunk.count_params() == 14_714_688 + 4_719_616 + 1_049_600 + 512 == 20_484_416
    assert model.count_params() - trunk.count_params() == extras


def test_tiny_width_runs_and_is_finite(tiny_300):
    outputs = tiny_300(_images(0))
    expected = {k: (1,) + v for k, v in expected_shapes(300, TINY).items()}
    assert {k: tuple(v.shape) for k, v in outputs.items()} == expected
    for value in outputs.values():
        assert np.all(np.isfinite(ops.convert_to_numpy(value)))
    norms = np.linalg.norm(ops.convert_to_numpy(outputs["p1"]), axis=-1)
    assert (norms > 0).mean() > 0.5
    np.testing.assert_allclose(norms[norms > 0], 20.0, rtol=1e-4)  # L2Norm with γ = 20


def test_extras_pad_one_on_both_sides(tiny_300):
    """conv9_2 (3x3, stride 2, pad 1) on the 10x10 map samples rows/columns -1..9 like Caffe,
    not Keras 'same' (which would pad only the bottom/right)."""
    inner = keras.Model(
        tiny_300.input, [tiny_300.get_layer("conv9_1").output, tiny_300.get_layer("conv9_2").output]
    )
    reduced, output = (ops.convert_to_numpy(t).astype(np.float64) for t in inner(_images(1)))
    kernel, bias = tiny_300.get_layer("conv9_2").get_weights()
    padded = np.pad(reduced, [(0, 0), (1, 1), (1, 1), (0, 0)])
    expected = np.zeros(output.shape) + bias
    for dy in range(3):
        for dx in range(3):
            expected += padded[:, dy : dy + 9 : 2, dx : dx + 9 : 2] @ kernel[dy, dx]
    np.testing.assert_allclose(output, np.maximum(expected, 0.0), rtol=1e-4, atol=1e-4)


def test_keras_file_round_trip(tiny_300):
    images = _images(2)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "vgg.keras")
        tiny_300.save(path)
        restored = keras.saving.load_model(path, safe_mode=True)
    expected, actual = tiny_300(images), restored(images)
    for key in expected_shapes(300):
        np.testing.assert_allclose(ops.convert_to_numpy(actual[key]), ops.convert_to_numpy(expected[key]), rtol=1e-5, atol=1e-5)


def test_mixed_precision_outputs_follow_the_policy():
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = VGG16SSD(300, width_multiplier=TINY)
    outputs = model(_images(3))
    for value in outputs.values():
        assert keras.backend.standardize_dtype(value.dtype) == "bfloat16"
        assert np.all(np.isfinite(ops.convert_to_numpy(ops.cast(value, "float32"))))
    assert all(w.dtype == "float32" for w in model.weights)


def test_scaled_channels():
    assert [scaled_channels(c, 0.5) for c in (64, 1024, 10)] == [32, 512, 8]
    assert scaled_channels(512, 1.0) == 512 and scaled_channels(64, 1 / 32) == 8
    assert scaled_channels(100, 0.333) == 33


@pytest.mark.parametrize(
    "kwargs, argument",
    [({"image_size": 320}, "image_size"), ({"width_multiplier": 0}, "width_multiplier"), ({"l2_norm_scale": -1.0}, "l2_norm_scale")],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        VGG16SSD(**kwargs)


def test_netnet300_module_parameters(full_width):
    """SSD-NET's extra modules on the VGG16-SSD300 pyramid (spec §6): NNFM x4 at width 256,
    NEM x2 (1x1 conv gate), NTM x2 (3x3 conv 256 -> 256)."""
    shapes = {k: (None,) + tuple(v.shape[1:]) for k, v in full_width[300].output.items()}
    fused = {}
    nnfm = []
    for level, (shallower, current, deeper) in enumerate(
        [("conv3_3", "p1", "p2"), ("p1", "p2", "p3"), ("p2", "p3", "p4"), ("p3", "p4", "p5")], start=1
    ):
        layer = NearestNeighborFusion(256, kernel_initializer="zeros")
        layer.build(shapes[current], shapes[shallower], shapes[deeper])
        nnfm.append(layer.count_params())
        fused[level] = shapes[current][:3] + (256,)
    assert nnfm == [459_008, 524_544, 459_008, 262_400]
    nem, ntm = [], []
    for shallow, deep in ((1, 3), (2, 4)):
        erasing = NeighborErasing()
        erasing.build(fused[shallow], fused[deep])
        transferring = NeighborTransferring(kernel_initializer="zeros")
        transferring.build(fused[shallow], fused[deep])
        nem.append(erasing.count_params())
        ntm.append(transferring.count_params())
    assert nem == [257, 257] and ntm == [590_080, 590_080]
    assert sum(nnfm) + sum(nem) + sum(ntm) == 2_885_634


def numpy_conv3x3(x, kernel, bias, dilation=1):
    """'same' 3×3 convolution (+ ReLU) of one image [H, W, C] as one matrix product of the
    nine shifted copies (im2col), float32."""
    padded = np.pad(x, [(dilation, dilation), (dilation, dilation), (0, 0)])
    height, width = x.shape[:2]
    columns = np.concatenate(
        [padded[dy * dilation : dy * dilation + height, dx * dilation : dx * dilation + width] for dy in range(3) for dx in range(3)],
        axis=-1,
    )
    out = columns.reshape(height * width, -1) @ kernel.reshape(-1, kernel.shape[-1]) + bias
    return np.maximum(out, 0.0).reshape(height, width, -1)


def numpy_max_pool(x, size, stride):
    """Max pooling of [H, W, C] with Caffe's ceil mode (windows past the border see only real
    pixels); ``stride`` 1 is SSD's pool5 (3×3/1, padding 1)."""
    height, width = x.shape[:2]
    if stride == 1:
        padded = np.pad(x, [(1, 1), (1, 1), (0, 0)], constant_values=-np.inf)
        return np.max([padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)], axis=0)
    out_h, out_w = -(-height // stride), -(-width // stride)
    padded = np.pad(x, [(0, out_h * stride - height), (0, out_w * stride - width), (0, 0)], constant_values=-np.inf)
    return padded.reshape(out_h, stride, out_w, stride, -1).max(axis=(1, 3))


def numpy_ssd_trunk(rgb, vgg16):
    """conv4_3 and conv7 of VGG16-SSD computed from the keras.applications VGG16 weights: the
    BGR image through block1..block5, then SSD's pool5 (3×3/1), fc6 read as a 7×7 kernel and
    applied at taps 0/3/6 (dilation 6) for every 4th unit, and fc7's every 4th row/column."""
    weights = {layer.name: layer.get_weights() for layer in vgg16.layers if layer.weights}
    h = rgb[0, :, :, ::-1]
    for block, count in enumerate((2, 2, 3, 3, 3), start=1):
        if block > 1:
            h = numpy_max_pool(h, 2, 2)
        for index in range(1, count + 1):
            h = numpy_conv3x3(h, *weights[f"block{block}_conv{index}"])
        if block == 4:
            conv4_3 = h
    h = numpy_max_pool(h, 3, 1)
    fc6_kernel, fc6_bias = weights["fc1"]
    taps = np.zeros((3, 3, 512, 1024), "float32")
    for a in range(3):
        for b in range(3):
            row = ((3 * a) * 7 + 3 * b) * 512  # pool5 position (3a, 3b) of the flattened 7x7x512 input
            taps[a, b] = fc6_kernel[row : row + 512, 0::4]
    h = numpy_conv3x3(h, taps, fc6_bias[0::4], dilation=6)
    fc7_kernel, fc7_bias = weights["fc2"]
    conv7 = np.maximum(h @ fc7_kernel[0::4, 0::4] + fc7_bias[0::4], 0.0)
    return conv4_3[None], conv7[None]


@pytest.fixture(scope="module")
def random_vgg16():
    """keras.applications.VGG16 with the classifier, random weights and random biases."""
    keras.utils.set_random_seed(3)
    vgg16 = keras.applications.VGG16(weights=None, include_top=True)
    rng = np.random.default_rng(4)
    for layer in vgg16.layers:
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0.0, 0.05, layer.bias.shape).astype("float32"))
    return vgg16


@pytest.mark.single_backend  # 138M-parameter keras.applications model: minutes under JAX
def test_converted_trunk_equals_numpy_from_vgg16_weights(random_vgg16):
    from keras_cvx.models.backbones.vgg import convert_vgg16_weights

    model = convert_vgg16_weights(random_vgg16, VGG16SSD(300))
    probe = keras.Model(model.input, [model.get_layer("conv4_3").output, model.get_layer("conv7").output])
    rgb = np.random.default_rng(5).uniform(-120, 130, size=(1, 300, 300, 3)).astype("float32")
    conv4_3, conv7 = (ops.convert_to_numpy(t) for t in probe(rgb))
    expected_4_3, expected_7 = numpy_ssd_trunk(rgb, random_vgg16)
    assert conv4_3.shape == (1, 38, 38, 512) and conv7.shape == (1, 19, 19, 1024)
    for actual, expected in ((conv4_3, expected_4_3), (conv7, expected_7)):
        assert (expected > 0).mean() > 0.2  # the ReLUs are not all off
        np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())
    # the trunk that gets ImageNet weights: VGG16 convs + conv6 + conv7 (+ L2Norm γ, which keeps 20)
    trunk = keras.Model(model.input, [model.output["p1"], model.output["p2"]])
    assert trunk.count_params() == 20_484_416
    assert model.count_params() == 20_484_416 + 2_459_520


@pytest.mark.tensorflow_only
def test_imagenet_weights_come_from_keras_applications(random_vgg16, monkeypatch):
    calls = []

    def fake_vgg16(**kwargs):
        calls.append(kwargs)
        return random_vgg16

    monkeypatch.setattr(keras.applications, "VGG16", fake_vgg16)
    model = VGG16SSD(300, weights="imagenet")
    assert calls == [{"include_top": True, "weights": "imagenet"}]
    kernel, bias = model.get_layer("conv6").get_weights()
    fc6_kernel, fc6_bias = random_vgg16.get_layer("fc1").get_weights()
    np.testing.assert_array_equal(kernel[1, 2, :, 5], fc6_kernel[(3 * 7 + 6) * 512 : (3 * 7 + 6) * 512 + 512, 20])
    np.testing.assert_array_equal(bias, fc6_bias[::4])
    first = model.get_layer("conv1_1").get_weights()[0]
    np.testing.assert_array_equal(first[:, :, 0], random_vgg16.get_layer("block1_conv1").get_weights()[0][:, :, 2])


def test_imagenet_weights_need_the_paper_width():
    with pytest.raises(ValueError, match="width_multiplier"):
        VGG16SSD(300, width_multiplier=0.5, weights="imagenet")
    with pytest.raises(ValueError, match="weights"):
        VGG16SSD(300, weights="vgg16.h5")


def test_converter_rejects_a_vgg16_without_its_classifier(tiny_300):
    from keras_cvx.models.backbones.vgg import convert_vgg16_weights

    headless = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="include_top"):
        convert_vgg16_weights(headless, tiny_300)
