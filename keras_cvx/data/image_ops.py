"""The single-image operations of AutoAugment and RandAugment, in TensorFlow, with PIL's
semantics (the library the policies were searched and published with).

Papers: "AutoAugment: Learning Augmentation Policies from Data", E. D. Cubuk et al., CVPR 2019,
arXiv 1805.09501; "RandAugment: Practical automated data augmentation with a reduced search
space", E. D. Cubuk et al., arXiv 1909.13719; used by "Circumventing Outliers of AutoAugment
with Knowledge Distillation", L. Wei et al., ECCV 2020, arXiv 2003.11342. The policies that
combine these ops live in ``augment.py``.

Every op takes one image ``[H, W, C]`` (C = 1 or 3) as float32 values in [0, 255] and returns
float32 ``[H, W, C]`` clipped to [0, 255]; arguments may be Python numbers or scalar tensors.
What each op computes (``x`` an input value, ``f`` a factor):

* ``affine_transform``: PIL's ``Image.transform(AFFINE)``: the output pixel whose centre is
  ``(u, v)`` (pixel-centre coordinates, the top-left pixel's centre at (0.5, 0.5)) samples the
  input at ``(a u + b v + c, d u + e v + f)``; samples outside the image get ``fill_value``.
  Runs on ``ImageProjectiveTransformV3`` (index coordinates, so ``c`` and ``f`` are shifted by
  the half-pixel terms). ``interpolation="nearest"`` picks the pixel containing the sample,
  as PIL does; ``"bilinear"`` blends the 4 neighbours, outside neighbours counting as
  ``fill_value`` (PIL instead samples border pixels; only the outermost ring can differ).
* ``rotate(degrees)``: counter-clockwise about the image centre ``(W/2, H/2)`` (PIL
  ``Image.rotate``); ``shear_x(c)``: samples ``(u + c v, v)``; ``shear_y(c)``: ``(u, v + c u)``
  (PIL/timm, shear about the top-left corner); ``translate_x(p)``: samples ``(u + p, v)``, so
  the content moves ``p`` pixels left (``translate_y``: up).
* ``auto_contrast``: per channel ``(x − lo) · 255 / (hi − lo)`` with ``lo, hi`` the channel's
  min and max; channels with ``hi == lo`` are unchanged (PIL ``ImageOps.autocontrast``, which
  truncates the result; we keep it unrounded).
* ``equalize``: PIL ``ImageOps.equalize`` per channel on the 256-bin histogram ``h``:
  ``step = (Σh − h[last non-empty bin]) // 255``; unchanged if ``step == 0``, otherwise
  ``lut[i] = min((step // 2 + Σ_{j<i} h[j]) // step, 255)`` and ``x -> lut[x]``.
* ``invert``: ``255 − x``; ``posterize(bits)``: keeps the top ``bits`` bits,
  ``floor(x / 2^(8−bits)) · 2^(8−bits)`` (0 bits gives black); ``solarize(t)``: ``x`` if
  ``x < t`` else ``255 − x``; ``solarize_add(a, t=128)``: ``min(x + a, 255)`` if ``x < t``.
* ``color``, ``contrast``, ``brightness``, ``sharpness`` (PIL ``ImageEnhance``): blend
  ``d + f (x − d)`` with a degenerate image ``d``: the grey image (``0.299 R + 0.587 G +
  0.114 B``; a 1-channel image is its own grey, so ``color`` leaves it unchanged), a constant
  image of the grey image's mean rounded to an integer, black, or the image smoothed with the
  3x3 kernel ``[[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13`` with its outer ring of pixels
  unchanged. ``f = 1`` is the identity; ``f > 1`` extrapolates and is clipped. PIL rounds
  ``d`` and truncates the blend to uint8; we keep floats (callers with uint8 data round once
  per op), so results can differ from PIL by one grey level.

``posterize`` (below 8 bits) and ``equalize`` work on the values rounded to integers.
"""

import math

import tensorflow as tf

GREY_WEIGHTS = (0.299, 0.587, 0.114)
INTERPOLATIONS = ("nearest", "bilinear")


def affine_transform(image, matrix, fill_value=128.0, interpolation="nearest"):
    """Samples ``image`` at ``(a u + b v + c, d u + e v + f)`` for every output pixel centre
    ``(u, v)``; ``matrix = (a, b, c, d, e, f)`` (numbers or scalar tensors)."""
    a, b, c, d, e, f = (tf.cast(value, tf.float32) for value in matrix)
    # Pixel-centre coordinates u = x + 0.5: x_in = a x + b y + (c + a/2 + b/2 − 1/2).
    transform = tf.stack([a, b, c + 0.5 * (a + b) - 0.5, d, e, f + 0.5 * (d + e) - 0.5, 0.0, 0.0])
    image = tf.convert_to_tensor(image, tf.float32)
    output = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=transform[None],
        output_shape=tf.shape(image)[:2],
        fill_value=tf.cast(fill_value, tf.float32),
        interpolation=interpolation.upper(),
        fill_mode="CONSTANT",
    )
    return tf.ensure_shape(output[0], image.shape)


def rotate(image, degrees, fill_value=128.0, interpolation="nearest"):
    """Rotates counter-clockwise by ``degrees`` about the image centre (PIL ``rotate``)."""
    image = tf.convert_to_tensor(image, tf.float32)
    height, width = _size(image)
    angle = -tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = width / 2.0, height / 2.0
    matrix = (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)
    return affine_transform(image, matrix, fill_value, interpolation)


def shear_x(image, factor, fill_value=128.0, interpolation="nearest"):
    """Samples ``(u + factor · v, v)`` (PIL affine ``(1, factor, 0, 0, 1, 0)``)."""
    return affine_transform(image, (1.0, factor, 0.0, 0.0, 1.0, 0.0), fill_value, interpolation)


def shear_y(image, factor, fill_value=128.0, interpolation="nearest"):
    """Samples ``(u, v + factor · u)`` (PIL affine ``(1, 0, 0, factor, 1, 0)``)."""
    return affine_transform(image, (1.0, 0.0, 0.0, factor, 1.0, 0.0), fill_value, interpolation)


def translate_x(image, pixels, fill_value=128.0, interpolation="nearest"):
    """Moves the content ``pixels`` to the left (samples ``(u + pixels, v)``)."""
    return affine_transform(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0), fill_value, interpolation)


def translate_y(image, pixels, fill_value=128.0, interpolation="nearest"):
    """Moves the content ``pixels`` up (samples ``(u, v + pixels)``)."""
    return affine_transform(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels), fill_value, interpolation)


def auto_contrast(image):
    """Stretches every channel to span [0, 255] (PIL ``ImageOps.autocontrast``, cutoff 0)."""
    image = tf.convert_to_tensor(image, tf.float32)
    lo = tf.reduce_min(image, axis=(0, 1), keepdims=True)
    hi = tf.reduce_max(image, axis=(0, 1), keepdims=True)
    stretched = (image - lo) * (255.0 / tf.maximum(hi - lo, 1e-6))
    return _clip(tf.where(hi > lo, stretched, image))


def equalize(image):
    """Histogram equalisation per channel with PIL's ``ImageOps.equalize`` look-up table."""
    levels = tf.cast(_levels(image), tf.int32)
    channels = [_equalize_channel(levels[..., i]) for i in range(levels.shape[-1])]
    return tf.stack(channels, axis=-1)


def _equalize_channel(levels):
    histogram = tf.math.bincount(tf.reshape(levels, [-1]), minlength=256, maxlength=256)
    last_nonzero = tf.gather(histogram, tf.reduce_max(tf.where(histogram > 0)))
    step = (tf.reduce_sum(histogram) - last_nonzero) // 255
    cumulative_before = tf.cumsum(histogram, exclusive=True)
    lut = tf.minimum((step // 2 + cumulative_before) // tf.maximum(step, 1), 255)
    equalized = tf.gather(lut, levels)
    return tf.cast(tf.where(step > 0, equalized, levels), tf.float32)


def invert(image):
    """``255 − x``."""
    return 255.0 - tf.convert_to_tensor(image, tf.float32)


def posterize(image, bits):
    """Keeps the ``bits`` (0..8) most significant bits of every value; 8 bits return the image
    unchanged (not rounded)."""
    image = tf.convert_to_tensor(image, tf.float32)
    bits = tf.cast(bits, tf.float32)
    quantum = tf.pow(2.0, 8.0 - bits)
    return tf.where(bits >= 8.0, image, tf.floor(_levels(image) / quantum) * quantum)


def solarize(image, threshold):
    """Inverts the values ``>= threshold``."""
    image = tf.convert_to_tensor(image, tf.float32)
    return tf.where(image < tf.cast(threshold, tf.float32), image, 255.0 - image)


def solarize_add(image, addition, threshold=128.0):
    """Adds ``addition`` to the values ``< threshold`` (clipped to 255)."""
    image = tf.convert_to_tensor(image, tf.float32)
    added = tf.minimum(image + tf.cast(addition, tf.float32), 255.0)
    return tf.where(image < tf.cast(threshold, tf.float32), added, image)


def color(image, factor):
    """Saturation: blends the grey image (``factor`` 0) with the image (1)."""
    image = tf.convert_to_tensor(image, tf.float32)
    return blend(_grey(image), image, factor)


def contrast(image, factor):
    """Blends the constant image of the rounded mean grey level (0) with the image (1)."""
    image = tf.convert_to_tensor(image, tf.float32)
    mean = tf.floor(tf.reduce_mean(_grey(image)) + 0.5)
    return blend(mean, image, factor)


def brightness(image, factor):
    """Blends black (``factor`` 0) with the image (1), i.e. ``factor · x``."""
    return blend(0.0, image, factor)


def sharpness(image, factor):
    """Blends the 3x3-smoothed image (``factor`` 0) with the image (1); ``factor > 1`` sharpens."""
    image = tf.convert_to_tensor(image, tf.float32)
    channels = image.shape[-1]
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
    smoothed = tf.nn.depthwise_conv2d(image[None], kernel, strides=[1, 1, 1, 1], padding="VALID")[0]
    inner = tf.pad(tf.ones_like(smoothed, dtype=tf.bool), [[1, 1], [1, 1], [0, 0]])
    degenerate = tf.where(inner, tf.pad(smoothed, [[1, 1], [1, 1], [0, 0]]), image)
    return blend(degenerate, image, factor)


def blend(degenerate, image, factor):
    """``degenerate + factor · (image − degenerate)`` clipped to [0, 255] (PIL ``Image.blend``)."""
    degenerate = tf.cast(degenerate, tf.float32)
    return _clip(degenerate + tf.cast(factor, tf.float32) * (tf.cast(image, tf.float32) - degenerate))


def _grey(image):
    if image.shape[-1] == 1:
        return image
    weights = tf.constant(GREY_WEIGHTS, tf.float32)
    return tf.reduce_sum(image * weights, axis=-1, keepdims=True)


def _levels(image):
    return tf.round(_clip(tf.convert_to_tensor(image, tf.float32)))


def _clip(image):
    return tf.clip_by_value(image, 0.0, 255.0)


def _size(image):
    shape = tf.cast(tf.shape(image), tf.float32)
    return shape[0], shape[1]
