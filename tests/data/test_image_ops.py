"""The ops against PIL (the library AutoAugment/RandAugment were defined with) and NumPy."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from keras_cvx.data import image_ops

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (17, 23, 3), dtype=np.uint8)
# A low-contrast image whose channels span different ranges (autocontrast/equalize do something).
NARROW = np.stack([RNG.integers(40, 90, (13, 11)), RNG.integers(0, 200, (13, 11)), RNG.integers(120, 130, (13, 11))], -1).astype(np.uint8)
FILL = (128, 128, 128)


def _ours(fn, image, *args, **kwargs):
    out = fn(tf.constant(image, tf.float32), *args, **kwargs).numpy()
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255
    return np.round(out).astype(int)


def _pil(image):
    return Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)


def _array(pil_image, channels=3):
    array = np.asarray(pil_image).astype(int)
    return array[..., None] if channels == 1 else array


@pytest.mark.parametrize("degrees", [15.0, -30.0, 90.0, 37.5])
def test_rotate_matches_pil(degrees):
    expected = _array(_pil(RGB).rotate(degrees, fillcolor=FILL))
    np.testing.assert_array_equal(_ours(image_ops.rotate, RGB, degrees), expected)


@pytest.mark.parametrize("factor", [0.3, -0.21])
def test_shear_matches_pil_affine(factor):
    pil = _pil(RGB)
    expected_x = _array(pil.transform(pil.size, Image.AFFINE, (1, factor, 0, 0, 1, 0), fillcolor=FILL))
    expected_y = _array(pil.transform(pil.size, Image.AFFINE, (1, 0, 0, factor, 1, 0), fillcolor=FILL))
    np.testing.assert_array_equal(_ours(image_ops.shear_x, RGB, factor), expected_x)
    np.testing.assert_array_equal(_ours(image_ops.shear_y, RGB, factor), expected_y)


@pytest.mark.parametrize("pixels", [5, -7, 3.4])
def test_translate_matches_pil_and_numpy(pixels):
    pil = _pil(RGB)
    expected = _array(pil.transform(pil.size, Image.AFFINE, (1, 0, pixels, 0, 1, 0), fillcolor=FILL))
    np.testing.assert_array_equal(_ours(image_ops.translate_x, RGB, pixels), expected)
    if float(pixels).is_integer():  # content moves `pixels` left / up, the gap is filled
        shift = int(pixels)
        shifted = np.full_like(RGB, 128, dtype=int)
        if shift > 0:
            shifted[:-shift] = RGB[shift:]
        else:
            shifted[-shift:] = RGB[:shift]
        np.testing.assert_array_equal(_ours(image_ops.translate_y, RGB, shift), shifted)


def test_bilinear_half_pixel_translate_averages_neighbours():
    got = image_ops.translate_x(tf.constant(RGB, tf.float32), 0.5, fill_value=0, interpolation="bilinear").numpy()
    expected = 0.5 * (RGB[:, :-1].astype(float) + RGB[:, 1:])
    np.testing.assert_allclose(got[:, :-1], expected, atol=1e-3)
    np.testing.assert_allclose(got[:, -1], 0.5 * RGB[:, -1], atol=1e-3)  # the outside neighbour is the fill 0


def test_rotate_fill_value_and_zero_angle():
    np.testing.assert_array_equal(_ours(image_ops.rotate, RGB, 0.0), RGB)
    corners = _ours(image_ops.rotate, RGB, 45.0, fill_value=7)[[0, 0, -1, -1], [0, -1, 0, -1]]
    np.testing.assert_array_equal(corners, 7)


@pytest.mark.parametrize("image", [RGB, NARROW, NARROW[..., :1]])
def test_histogram_ops_match_pil_exactly(image):
    channels = image.shape[-1]
    pil = _pil(image)
    np.testing.assert_array_equal(_ours(image_ops.equalize, image), _array(ImageOps.equalize(pil), channels))
    for bits in (1, 3, 8):
        np.testing.assert_array_equal(_ours(image_ops.posterize, image, bits), _array(ImageOps.posterize(pil, bits), channels))
    np.testing.assert_array_equal(_ours(image_ops.posterize, image, 0), 0)  # PIL refuses 0 bits; TF TPU gives black
    for threshold in (0, 100, 256):
        np.testing.assert_array_equal(_ours(image_ops.solarize, image, threshold), _array(ImageOps.solarize(pil, threshold), channels))
    np.testing.assert_array_equal(_ours(image_ops.invert, image), _array(ImageOps.invert(pil), channels))
    # PIL truncates the stretched values, we round: at most one grey level apart.
    np.testing.assert_allclose(_ours(image_ops.auto_contrast, image), _array(ImageOps.autocontrast(pil), channels), atol=1)


def test_auto_contrast_numpy_and_flat_channel():
    image = NARROW.astype(np.float32)
    image[..., 2] = 77.0  # a flat channel is left unchanged
    got = image_ops.auto_contrast(tf.constant(image)).numpy()
    lo, hi = image[..., :2].min((0, 1)), image[..., :2].max((0, 1))
    np.testing.assert_allclose(got[..., :2], (image[..., :2] - lo) * 255 / (hi - lo), atol=1e-3)
    np.testing.assert_array_equal(got[..., 2], 77.0)


def test_equalize_numpy_formula_on_a_hand_histogram():
    # 3 values: 0 x 300, 10 x 100, 200 x 112 -> step = (512 - 112) // 255 = 1,
    # lut[i] = min(0 + #pixels below i, 255): 0 -> 0, 10 -> 255 (300 clipped), 200 -> 255.
    image = np.concatenate([np.zeros(300), np.full(100, 10), np.full(112, 200)]).reshape(16, 32, 1)
    got = image_ops.equalize(tf.constant(image, tf.float32)).numpy()
    np.testing.assert_array_equal(np.unique(got[image == 0]), [0])
    np.testing.assert_array_equal(np.unique(got[image > 0]), [255])
    single = np.full((4, 4, 1), 90.0)  # step 0: unchanged
    np.testing.assert_array_equal(image_ops.equalize(tf.constant(single, tf.float32)), single)


def test_solarize_add_numpy():
    got = image_ops.solarize_add(tf.constant(RGB, tf.float32), 110).numpy()
    expected = np.where(RGB < 128, np.minimum(RGB.astype(int) + 110, 255), RGB)
    np.testing.assert_array_equal(got, expected)


ENHANCERS = [
    (image_ops.color, ImageEnhance.Color),
    (image_ops.contrast, ImageEnhance.Contrast),
    (image_ops.brightness, ImageEnhance.Brightness),
    (image_ops.sharpness, ImageEnhance.Sharpness),
]


@pytest.mark.parametrize("ours, theirs", ENHANCERS)
@pytest.mark.parametrize("factor", [0.0, 0.1, 0.5, 1.0, 1.9])
def test_enhance_ops_match_pil_within_one_level(ours, theirs, factor):
    for image in (RGB, NARROW[..., :1]):
        expected = _array(theirs(_pil(image)).enhance(factor), image.shape[-1])
        np.testing.assert_allclose(_ours(ours, image, factor), expected, atol=1)


def test_enhance_numpy_formulas():
    x = RGB.astype(np.float64)
    grey = x @ np.array(image_ops.GREY_WEIGHTS)
    f = 0.3
    got = image_ops.color(tf.constant(RGB, tf.float32), f).numpy()
    np.testing.assert_allclose(got, np.clip(grey[..., None] + f * (x - grey[..., None]), 0, 255), atol=1e-3)
    mean = np.floor(grey.mean() + 0.5)
    got = image_ops.contrast(tf.constant(RGB, tf.float32), 1.7).numpy()
    np.testing.assert_allclose(got, np.clip(mean + 1.7 * (x - mean), 0, 255), atol=1e-3)
    smooth = x.copy()
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13
    for i in range(1, x.shape[0] - 1):
        for j in range(1, x.shape[1] - 1):
            smooth[i, j] = np.tensordot(kernel, x[i - 1 : i + 2, j - 1 : j + 2], axes=([0, 1], [0, 1]))
    got = image_ops.sharpness(tf.constant(RGB, tf.float32), 0.0).numpy()
    np.testing.assert_allclose(got, smooth, atol=1e-3)
    grey_image = NARROW[..., :1].astype(np.float32)
    np.testing.assert_array_equal(image_ops.color(tf.constant(grey_image), 0.0), grey_image)  # 1 channel: its own grey


def test_ops_run_inside_a_graph_with_tensor_arguments():
    @tf.function
    def run(image, angle, bits):
        return image_ops.rotate(image, angle), image_ops.posterize(image, bits)

    rotated, posterized = run(tf.constant(RGB, tf.float32), tf.constant(15.0), tf.constant(3.0))
    np.testing.assert_array_equal(np.round(rotated.numpy()), _array(_pil(RGB).rotate(15.0, fillcolor=FILL)))
    np.testing.assert_array_equal(posterized.numpy(), _array(ImageOps.posterize(_pil(RGB), 3)))
