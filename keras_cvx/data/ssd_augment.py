"""SSD's training augmentation as per-image ``tf.data`` transforms with stateless seeds.

Paper: "SSD: Single Shot MultiBox Detector", W. Liu et al., ECCV 2016, arXiv 1512.02325,
Sec. 2.2 "Data augmentation" and Sec. 3.6 ("data augmentation for small object accuracy":
the zoom-out expansion). SSD credits this augmentation with +8.8 mAP on VOC2007 (Table 2);
NETNet (arXiv 2001.06690) trains with it. Reference code: Caffe SSD (weiliu89/caffe,
``examples/ssd/ssd_pascal.py``, ``ssd_coco.py``: ``batch_sampler``, ``distort_param``,
``expand_param``, ``emit_constraint``) and ssd.pytorch (``utils/augmentations.py``:
``SSDAugmentation``, ``PhotometricDistort``, ``Expand``, ``RandomSampleCrop``).

One training image goes through, in SSD's order (``SSDAugmentation``):

1. Photometric distortion (ssd.pytorch's ``PhotometricDistort``; Caffe's ``distort_param``):
   brightness ``+δ``, ``δ ~ U(−32, 32)``; then, in random order (p = 0.5 each way), contrast
   ``×α``, ``α ~ U(0.5, 1.5)`` either before or after the HSV steps: saturation ``S ×
   U(0.5, 1.5)`` and hue ``H + U(−18°, 18°)`` (wrapping around the circle). Each of the four
   is applied with probability 0.5. Values are clipped to [0, 255] after every step (Caffe
   works on uint8 images; ssd.pytorch keeps unclipped floats, so a brightened pixel above 255
   there is not the same after contrast) and S to [0, 1].
2. Expand ("zoom out", p = 0.5): ratio ``r ~ U(1, 4)``; the image is placed at
   ``(⌊U(0, W r − W)⌋, ⌊U(0, H r − H)⌋)`` on a ``⌊H r⌋ × ⌊W r⌋`` canvas filled with the pixel
   mean; boxes shift with it.
3. Min-IoU random crop (Caffe's ``batch_sampler``): candidates are the whole canvas and, for
   each of the six samplers with a minimum IoU of 0.1, 0.3, 0.5, 0.7, 0.9 and "any" (Caffe's
   ``max_jaccard_overlap: 1.0``: no IoU bound), the first of up to 50 trials that meets the
   sampler's constraint. A trial draws a scale ``s ~ U(0.3, 1)`` and an aspect ratio
   ``a ~ U(max(0.5, s²), min(2, 1/s²))``, a window ``s√a`` of the canvas width by ``s/√a`` of
   its height, at a uniform position; its pixel corners are floored. It meets the constraint
   when some ground-truth box has IoU ≥ the sampler's minimum with it and some box's centre
   lies strictly inside it. One candidate is then picked uniformly (so the whole canvas has
   probability 1/(1 + number of samplers that found a window)). Boxes whose centres lie
   inside the window are kept (Caffe's ``emit_type: CENTER``), clipped to it; the others are
   dropped with their labels and masks.
4. Warp resize of the window to the output size (no aspect preservation), bilinear with
   half-pixel centres (``tf.image.resize``). The window is cut from the photometrically
   distorted image and padded with the fill value where it extends beyond it, which equals
   cropping the expanded canvas (tested) without building the parts of a canvas (up to 16
   times the image) that the window leaves out.
5. Horizontal flip, p = 0.5 (after the resize: bilinear resizing with half-pixel centres
   commutes with the flip).

Masks (``[n, H, W]`` 0/1) follow the image: the window is resized straight onto the
``mask_stride`` grid (bilinear, threshold 0.5, outside the image 0), as in
``keras_cvx.data.coco``'s target contract.

Randomness: every draw is ``tf.random.stateless_*`` of one ``[2]`` int seed per image, split
into one seed per step, so an image's augmentation depends only on its seed (reproducible
under parallel ``map``). ``SSDAugmentation.sample`` returns all the draws as a dict and
``SSDAugmentation.apply`` is deterministic given them (what the tests check against NumPy).

Differences from the references, decided here:

* Crop: Caffe's sampler (its seven options including 0.5; scale/aspect parameterisation
  relative to the canvas; pick among the samplers that succeeded) plus ssd.pytorch's rule
  that a window must contain at least one box centre. ssd.pytorch instead draws one option of
  six (no 0.5) and redraws until a window is found, samples width and height independently in
  [0.3, 1] with an absolute aspect-ratio test, and its IoU test (``min < min_iou and max >
  max_iou``) is looser.
* Hue in degrees as ssd.pytorch (±18°); Caffe adds ±18 to OpenCV's 8-bit hue (±36°) and clips.
* ssd.pytorch's ``RandomLightingNoise`` (random channel permutation) is off by default, as in
  Caffe (``random_order_prob: 0.0``); ``channel_swap_probability=0.5`` turns it on.
* Caffe picks the resize interpolation at random among five OpenCV modes; we use bilinear.
* Mean subtraction is not part of this pipeline: the models subtract their ``pixel_mean``.
"""

import json
import os

import numpy as np
import tensorflow as tf

from keras_cvx.data.coco import _check_mask_stride, check_annotations, class_id_map, example_arrays, load_coco
from keras_cvx.data.transforms import clip_boxes
from keras_cvx.validation import require_positive, require_positive_int, require_unit_interval

SSD_PIXEL_MEAN = (123.0, 117.0, 104.0)
"""SSD's BGR mean (104, 117, 123) in RGB order: the fill value of the expanded canvas."""

CROP_MIN_IOUS = (0.1, 0.3, 0.5, 0.7, 0.9, None)
"""Caffe SSD's samplers: minimum IoU with some ground-truth box (``None`` = any IoU)."""

_CHANNEL_PERMUTATIONS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))

# Everything here is written with explicit tf.cond / tf.where (no Python control flow on
# tensors): AutoGraph has nothing to convert, and converting costs seconds per trace.
_no_autograph = tf.autograph.experimental.do_not_convert


def _range(name, value, low=0.0):
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not low <= value[0] <= value[1]:
        raise ValueError(f"`{name}` must be a pair (low, high) with {low} <= low <= high, got {value!r}.")
    return float(value[0]), float(value[1])


def _size(name, value):
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"`{name}` must be an int or a pair (height, width), got {value!r}.")
    return require_positive_int(name, value[0]), require_positive_int(name, value[1])


@_no_autograph
def adjust_photometric(image, params):
    """Applies drawn photometric parameters to a float ``[H, W, 3]`` RGB image in 0..255.

    ``params``: ``brightness`` (added), ``contrast`` (multiplied), ``contrast_first`` (bool:
    contrast before the HSV steps, else after), ``saturation`` (S multiplied, clipped to
    [0, 1]), ``hue`` (degrees, added modulo 360), ``permutation`` (int index into the six
    channel orders, 0 = unchanged). Clips to [0, 255] after each step. Identity values
    (0, 1, 1, 0, 0) leave the image unchanged up to the HSV round trip's rounding.
    """
    image = tf.convert_to_tensor(image, tf.float32)
    image = tf.clip_by_value(image + params["brightness"], 0.0, 255.0)

    def contrast(x):
        return tf.clip_by_value(x * params["contrast"], 0.0, 255.0)

    image = tf.cond(params["contrast_first"], lambda: contrast(image), lambda: image)
    hsv = tf.image.rgb_to_hsv(image / 255.0)
    hue = tf.math.floormod(hsv[..., 0] + params["hue"] / 360.0, 1.0)
    saturation = tf.clip_by_value(hsv[..., 1] * params["saturation"], 0.0, 1.0)
    image = tf.image.hsv_to_rgb(tf.stack([hue, saturation, hsv[..., 2]], axis=-1)) * 255.0
    image = tf.clip_by_value(image, 0.0, 255.0)
    image = tf.cond(params["contrast_first"], lambda: image, lambda: contrast(image))
    order = tf.gather(tf.constant(_CHANNEL_PERMUTATIONS, tf.int32), params["permutation"])
    return tf.gather(image, order, axis=-1)


@_no_autograph
def warp_window(image, window, output_size, fill_value=0.0):
    """Bilinear resize (half-pixel centres, ``tf.image.resize``) of the integer window
    ``[x1, y1, x2, y2]`` of ``image`` ``[H, W, C]`` to ``output_size`` ``(h, w)``; the window
    may extend beyond the image, whose outside reads as ``fill_value`` (scalar or ``[C]``).

    The part of the window inside the image is cut out and padded with ``fill_value`` up to
    the window (the window must overlap the image), then resized: the expanded canvas of
    SSD's zoom-out is never built beyond the window.
    """
    out_h, out_w = _size("output_size", output_size)
    image = tf.convert_to_tensor(image, tf.float32)
    window = tf.cast(window, tf.int32)
    fill = tf.cast(fill_value, tf.float32)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    x1, y1 = tf.clip_by_value(window[0], 0, width), tf.clip_by_value(window[1], 0, height)
    x2, y2 = tf.clip_by_value(window[2], x1, width), tf.clip_by_value(window[3], y1, height)
    inside = image[y1:y2, x1:x2] - fill
    pads = [[y1 - window[1], window[3] - y2], [x1 - window[0], window[2] - x2], [0, 0]]
    cut = tf.pad(inside, pads) + fill
    out = tf.image.resize(cut, (out_h, out_w), method="bilinear")
    return tf.ensure_shape(out, [out_h, out_w, image.shape[-1]])


@_no_autograph
def box_iou(boxes, window):
    """IoU ``[..., N]`` of ``xyxy`` windows ``[..., 4]`` with boxes ``[N, 4]`` (0 for empty)."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    window = tf.convert_to_tensor(window, tf.float32)[..., None, :]
    ix = tf.maximum(tf.minimum(window[..., 2], boxes[:, 2]) - tf.maximum(window[..., 0], boxes[:, 0]), 0.0)
    iy = tf.maximum(tf.minimum(window[..., 3], boxes[:, 3]) - tf.maximum(window[..., 1], boxes[:, 1]), 0.0)
    intersection = ix * iy
    area_window = (window[..., 2] - window[..., 0]) * (window[..., 3] - window[..., 1])
    area_boxes = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area_window + area_boxes - intersection
    return tf.math.divide_no_nan(intersection, union)


@_no_autograph
def centres_inside(boxes, window):
    """``[..., N]`` bool: the centre of each box lies strictly inside each window ``[..., 4]``."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    window = tf.convert_to_tensor(window, tf.float32)[..., None, :]
    cx = (boxes[:, 0] + boxes[:, 2]) / 2.0
    cy = (boxes[:, 1] + boxes[:, 3]) / 2.0
    return (window[..., 0] < cx) & (cx < window[..., 2]) & (window[..., 1] < cy) & (cy < window[..., 3])


@_no_autograph
def select_crop(trials, boxes, min_ious, choice):
    """Caffe SSD's choice among the samplers' first valid trials.

    Args:
        trials: float ``[K, T, 4]`` ``xyxy`` pixel windows, ``K = len(min_ious)`` samplers.
        boxes: ``[N, 4]`` ground-truth boxes in the same pixels.
        min_ious: per sampler, the minimum IoU with some box, or ``None`` (any IoU).
        choice: a uniform number in [0, 1) that picks one candidate.

    Returns:
        ``(index, window)``: ``index`` 0 for the whole canvas, ``k + 1`` for sampler ``k``'s
        first valid trial; ``window`` float ``[4]`` (undefined for index 0).
    """
    trials = tf.convert_to_tensor(trials, tf.float32)
    iou = box_iou(boxes, trials)  # [K, T, N]
    has_centre = tf.reduce_any(centres_inside(boxes, trials), axis=-1)
    thresholds = tf.constant([-1.0 if m is None else float(m) for m in min_ious], tf.float32)
    meets_iou = tf.reduce_any(iou >= thresholds[:, None, None], axis=-1)
    valid = meets_iou & has_centre  # [K, T]; false everywhere without boxes
    found = tf.reduce_any(valid, axis=1)
    first = tf.argmax(tf.cast(valid, tf.int32), axis=1, output_type=tf.int32)
    windows = tf.gather(trials, first, axis=1, batch_dims=1)  # [K, 4]
    candidates = tf.concat([[True], found], axis=0)
    count = tf.reduce_sum(tf.cast(candidates, tf.int32))
    pick = tf.minimum(tf.cast(tf.floor(choice * tf.cast(count, tf.float32)), tf.int32), count - 1)
    rank = tf.cumsum(tf.cast(candidates, tf.int32)) - 1
    index = tf.argmax(tf.cast(candidates & (rank == pick), tf.int32), output_type=tf.int32)
    window = tf.gather(tf.concat([tf.zeros([1, 4]), windows], axis=0), index)
    return index, window


class SSDAugmentation:
    """SSD's training augmentation of one image (module docstring) with its boxes, labels
    and masks.

    Args:
        output_size: ``(height, width)`` (or an int) of the warped image.
        mask_stride: the masks come out on the ``output_size / mask_stride`` grid (default 1).
        photometric: apply the photometric distortion (default True).
        brightness_delta: ``δ`` bound, 32.
        contrast_range, saturation_range: ``(0.5, 1.5)`` each.
        hue_delta: degrees, 18.
        distort_probability: of each photometric step, 0.5.
        channel_swap_probability: ssd.pytorch's random channel permutation, 0 (Caffe).
        expand_probability: 0.5; ``max_expand_ratio``: 4.
        fill_value: RGB of the expanded canvas, ``SSD_PIXEL_MEAN`` (123, 117, 104).
        crop: apply the min-IoU crop (default True).
        min_ious: the samplers, ``CROP_MIN_IOUS`` = (0.1, 0.3, 0.5, 0.7, 0.9, None).
        max_trials: per sampler, 50.
        scale_range: ``(0.3, 1.0)``; ``aspect_range``: ``(0.5, 2.0)``.
        flip_probability: 0.5.

    Call ``augment(image, boxes, labels, seed, masks=None)`` with ``image`` ``[H, W, 3]``
    (uint8 or float in 0..255), ``boxes`` float ``[n, 4]`` ``xyxy`` pixels (valid boxes only),
    ``labels`` ``[n]``, ``seed`` int ``[2]``, ``masks`` optional ``[n, H, W]``. Returns
    ``(image, boxes, labels, masks)``: float32 ``[h, w, 3]``, the ``m <= n`` kept boxes in
    output pixels and their labels, uint8 masks ``[m, h / s, w / s]`` (or ``None``).

    Example::

        augment = SSDAugmentation((300, 300))
        image = tf.zeros([480, 640, 3], tf.uint8)
        out, boxes, labels, _ = augment(image, tf.constant([[10., 20., 200., 300.]]), tf.constant([3]),
                                        seed=tf.constant([0, 7]))
        # out: (300, 300, 3) float32; boxes: (m, 4) with m in {0, 1}
    """

    def __init__(
        self,
        output_size,
        mask_stride=1,
        photometric=True,
        brightness_delta=32.0,
        contrast_range=(0.5, 1.5),
        saturation_range=(0.5, 1.5),
        hue_delta=18.0,
        distort_probability=0.5,
        channel_swap_probability=0.0,
        expand_probability=0.5,
        max_expand_ratio=4.0,
        fill_value=SSD_PIXEL_MEAN,
        crop=True,
        min_ious=CROP_MIN_IOUS,
        max_trials=50,
        scale_range=(0.3, 1.0),
        aspect_range=(0.5, 2.0),
        flip_probability=0.5,
    ):
        self.output_size = _size("output_size", output_size)
        self.mask_stride = require_positive_int("mask_stride", mask_stride)
        if any(side % self.mask_stride for side in self.output_size):
            raise ValueError(f"`mask_stride` ({mask_stride}) must divide both sides of output_size {self.output_size}.")
        self.photometric = bool(photometric)
        self.brightness_delta = float(brightness_delta)
        if self.brightness_delta < 0:
            raise ValueError(f"`brightness_delta` must be >= 0, got {brightness_delta!r}.")
        self.contrast_range = _range("contrast_range", contrast_range)
        self.saturation_range = _range("saturation_range", saturation_range)
        self.hue_delta = float(hue_delta)
        if not 0 <= self.hue_delta <= 180:
            raise ValueError(f"`hue_delta` must be in [0, 180] degrees, got {hue_delta!r}.")
        self.distort_probability = require_unit_interval("distort_probability", distort_probability, include_one=True)
        self.channel_swap_probability = require_unit_interval(
            "channel_swap_probability", channel_swap_probability, include_one=True
        )
        self.expand_probability = require_unit_interval("expand_probability", expand_probability, include_one=True)
        self.max_expand_ratio = require_positive("max_expand_ratio", max_expand_ratio)
        if self.max_expand_ratio < 1:
            raise ValueError(f"`max_expand_ratio` must be >= 1, got {max_expand_ratio!r}.")
        fill = np.broadcast_to(np.asarray(fill_value, np.float32), (3,))
        self.fill_value = tuple(float(v) for v in fill)
        self.crop = bool(crop)
        self.min_ious = tuple(None if m is None else require_unit_interval("min_ious", m, include_one=True) for m in min_ious)
        if not self.min_ious:
            raise ValueError("`min_ious` must name at least one sampler.")
        self.max_trials = require_positive_int("max_trials", max_trials)
        self.scale_range = _range("scale_range", scale_range)
        if not (0 < self.scale_range[0] and self.scale_range[1] <= 1):
            raise ValueError(f"`scale_range` must lie in (0, 1], got {scale_range!r}.")
        self.aspect_range = _range("aspect_range", aspect_range)
        if not self.aspect_range[0] > 0:
            raise ValueError(f"`aspect_range` must be positive, got {aspect_range!r}.")
        self.flip_probability = require_unit_interval("flip_probability", flip_probability, include_one=True)

    # ----------------------------------------------------------------------------- sampling
    @_no_autograph
    def sample_photometric(self, seed):
        """The photometric parameters of ``adjust_photometric`` (identity values when off)."""
        u = tf.random.stateless_uniform([11], seed)
        p = self.distort_probability if self.photometric else 0.0

        def between(low, high, value):
            return low + (high - low) * value

        return {
            "brightness": tf.where(u[0] < p, between(-self.brightness_delta, self.brightness_delta, u[1]), 0.0),
            "contrast_first": u[2] < 0.5,
            "contrast": tf.where(u[3] < p, between(*self.contrast_range, u[4]), 1.0),
            "saturation": tf.where(u[5] < p, between(*self.saturation_range, u[6]), 1.0),
            "hue": tf.where(u[7] < p, between(-self.hue_delta, self.hue_delta, u[8]), 0.0),
            "permutation": tf.where(
                u[9] < (self.channel_swap_probability if self.photometric else 0.0),
                tf.minimum(tf.cast(u[10] * 6.0, tf.int32), 5),
                0,
            ),
        }

    @_no_autograph
    def sample_expand(self, seed, height, width):
        """``[canvas_h, canvas_w, top, left]`` int32: where the image sits on the canvas."""
        u = tf.random.stateless_uniform([4], seed)
        ratio = tf.where(u[0] < self.expand_probability, 1.0 + (self.max_expand_ratio - 1.0) * u[1], 1.0)
        height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
        canvas_h = tf.maximum(tf.cast(tf.floor(height_f * ratio), tf.int32), height)
        canvas_w = tf.maximum(tf.cast(tf.floor(width_f * ratio), tf.int32), width)
        top = tf.cast(tf.floor(u[2] * (height_f * ratio - height_f)), tf.int32)
        left = tf.cast(tf.floor(u[3] * (width_f * ratio - width_f)), tf.int32)
        top = tf.clip_by_value(top, 0, canvas_h - height)
        left = tf.clip_by_value(left, 0, canvas_w - width)
        return tf.stack([canvas_h, canvas_w, top, left])

    @_no_autograph
    def crop_trials(self, seed, height, width):
        """``(trials, choice)``: float ``[K, T, 4]`` ``xyxy`` pixel windows of a ``height`` ×
        ``width`` canvas (floored corners, at least one pixel) and the uniform ``choice``."""
        k, t = len(self.min_ious), self.max_trials
        u = tf.random.stateless_uniform([k, t, 4], seed)
        choice = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(seed, 1))
        low_scale, high_scale = self.scale_range
        scale = low_scale + (high_scale - low_scale) * u[..., 0]
        low_aspect = tf.maximum(self.aspect_range[0], scale**2)
        high_aspect = tf.minimum(self.aspect_range[1], 1.0 / scale**2)
        aspect = low_aspect + (high_aspect - low_aspect) * u[..., 1]
        box_w, box_h = scale * tf.sqrt(aspect), scale / tf.sqrt(aspect)
        x, y = (1.0 - box_w) * u[..., 2], (1.0 - box_h) * u[..., 3]
        height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
        x1, y1 = tf.floor(x * width_f), tf.floor(y * height_f)
        x2 = tf.clip_by_value(tf.floor((x + box_w) * width_f), x1 + 1.0, width_f)
        y2 = tf.clip_by_value(tf.floor((y + box_h) * height_f), y1 + 1.0, height_f)
        return tf.stack([x1, y1, x2, y2], axis=-1), choice

    @_no_autograph
    def sample(self, seed, boxes, height, width):
        """All the random draws of one image as a dict: ``photometric`` (see
        ``adjust_photometric``), ``canvas`` (``[canvas_h, canvas_w, top, left]``), ``window``
        (int ``[4]`` ``xyxy`` on the canvas), ``crop_index`` (0 = whole canvas, ``k + 1`` =
        sampler ``k``), ``keep`` (bool ``[n]``) and ``flip`` (bool).

        ``boxes`` are the image's valid ``xyxy`` pixel boxes ``[n, 4]``.
        """
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=4)
        boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
        canvas = self.sample_expand(seeds[1], height, width)
        shifted = boxes + tf.cast(tf.stack([canvas[3], canvas[2], canvas[3], canvas[2]]), tf.float32)
        whole = tf.cast(tf.stack([0, 0, canvas[1], canvas[0]]), tf.float32)
        if self.crop:
            trials, choice = self.crop_trials(seeds[2], canvas[0], canvas[1])
            index, window = select_crop(trials, shifted, self.min_ious, choice)
        else:
            index, window = tf.constant(0, tf.int32), whole
        window = tf.where(index > 0, window, whole)
        keep = tf.where(index > 0, centres_inside(shifted, window), tf.ones_like(shifted[:, 0], tf.bool))
        return {
            "photometric": self.sample_photometric(seeds[0]),
            "canvas": canvas,
            "window": tf.cast(window, tf.int32),
            "crop_index": index,
            "keep": keep,
            "flip": tf.random.stateless_uniform([], seeds[3]) < self.flip_probability,
        }

    # ----------------------------------------------------------------------------- applying
    @_no_autograph
    def apply(self, image, boxes, labels, params, masks=None):
        """Applies drawn ``params`` (``sample``) deterministically; returns ``(image, boxes,
        labels, masks)`` as the call does."""
        out_h, out_w = self.output_size
        image = tf.cast(image, tf.float32)
        if self.photometric:
            image = adjust_photometric(image, params["photometric"])
        canvas, window = params["canvas"], params["window"]
        offset = tf.stack([canvas[3], canvas[2], canvas[3], canvas[2]])  # left, top
        in_image = window - offset
        image = warp_window(image, in_image, self.output_size, self.fill_value)

        keep = params["keep"]
        boxes = tf.boolean_mask(tf.reshape(tf.cast(boxes, tf.float32), [-1, 4]), keep)
        labels = tf.boolean_mask(labels, keep)
        window_f = tf.cast(window, tf.float32)
        boxes = boxes + tf.cast(offset, tf.float32) - tf.stack([window_f[0], window_f[1]] * 2)
        window_w, window_h = window_f[2] - window_f[0], window_f[3] - window_f[1]
        boxes = clip_boxes(boxes, (window_h, window_w))
        boxes = boxes * tf.stack([out_w / window_w, out_h / window_h] * 2)
        flip = params["flip"]
        image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
        boxes = tf.cond(
            flip, lambda: tf.stack([out_w - boxes[:, 2], boxes[:, 1], out_w - boxes[:, 0], boxes[:, 3]], axis=-1),
            lambda: boxes,
        )
        if masks is not None:
            masks = tf.boolean_mask(masks, keep)
            grid = (out_h // self.mask_stride, out_w // self.mask_stride)
            channels_last = tf.transpose(tf.cast(masks, tf.float32), [1, 2, 0])
            warped = warp_window(channels_last, in_image, grid, 0.0)
            masks = tf.transpose(tf.cast(warped >= 0.5, tf.uint8), [2, 0, 1])
            masks = tf.cond(flip, lambda: tf.reverse(masks, axis=[2]), lambda: masks)
        return image, boxes, labels, masks

    @_no_autograph
    def __call__(self, image, boxes, labels, seed, masks=None):
        image = tf.convert_to_tensor(image)
        params = self.sample(seed, boxes, tf.shape(image)[0], tf.shape(image)[1])
        return self.apply(image, boxes, labels, params, masks)


@_no_autograph
def prepare_ssd_example(image, image_id, boxes, labels, crowd, masks, seed, augmentation, max_instances):
    """One decoded example -> ``(image, targets)`` of ``keras_cvx.data.coco``'s contract, with
    ``augmentation`` (an ``SSDAugmentation``) in place of the letterbox resize and flip.

    Args:
        image: uint8 ``[h, w, 3]``; ``boxes``: float32 ``[n, 4]`` ``xyxy`` original pixels;
        labels: int32 ``[n]`` contiguous ids (negative = unknown, dropped); crowd: bool ``[n]``;
        masks: uint8 ``[n, h, w]`` or ``None``; seed: int ``[2]``; max_instances: int.

    The same clean-up as ``coco.prepare_example`` (crowd, unknown, non-finite and empty boxes
    are dropped, boxes clipped to the image) happens before the augmentation; the first
    ``max_instances`` boxes that survive it are kept. ``image_info["scale"]`` is the
    horizontal scale of the warp (an augmented image has no single original-to-output scale).
    """
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    finite = tf.reduce_all(tf.math.is_finite(boxes), axis=-1)
    boxes = clip_boxes(tf.where(finite[:, None], boxes, tf.zeros_like(boxes)), (height, width))
    area_ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    keep = finite & tf.logical_not(crowd) & (labels >= 0) & area_ok
    boxes, labels = tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep)
    if masks is not None:
        masks = tf.boolean_mask(masks, keep)
    params = augmentation.sample(seed, boxes, height, width)
    image, boxes, labels, masks = augmentation.apply(image, boxes, labels, params, masks)
    boxes, labels = boxes[:max_instances], labels[:max_instances]
    pad = max_instances - tf.shape(labels)[0]
    window = tf.cast(params["window"], tf.float32)
    targets = {
        "boxes": tf.ensure_shape(tf.pad(boxes, [[0, pad], [0, 0]]), [max_instances, 4]),
        "labels": tf.ensure_shape(tf.pad(labels, [[0, pad]], constant_values=-1), [max_instances]),
        "image_info": {
            "image_id": tf.cast(image_id, tf.int64),
            "height": tf.cast(height, tf.int32),
            "width": tf.cast(width, tf.int32),
            "scale": augmentation.output_size[1] / (window[2] - window[0]),
        },
    }
    if masks is not None:
        grid = [max_instances] + [side // augmentation.mask_stride for side in augmentation.output_size]
        targets["masks"] = tf.ensure_shape(tf.pad(masks[:max_instances], [[0, pad], [0, 0], [0, 0]]), grid)
    return image, targets


def coco_examples(annotation_file, image_dir, with_masks=False, max_instances=None, num_classes=None, strict=False):
    """``(count, load)``: ``load(index)`` (a ``tf.data``-compatible function of an int64
    index into the images sorted by id) returns ``(image uint8 [h, w, 3], image_id, boxes
    [n, 4] xyxy pixels, labels [n] contiguous ids (-1 unknown), crowd [n], masks [n, h, w] or
    None)`` of a COCO json + image folder. The json is checked and its problems reported as
    ``keras_cvx.data.coco.coco_dataset`` does (``check_annotations``; ``num_classes`` and
    ``strict`` as there), and each image file as it is read (``example_arrays``)."""
    coco = load_coco(annotation_file)
    source = repr(str(annotation_file))
    check_annotations(coco, max_instances, with_masks, num_classes, strict, source, stacklevel=4)
    contiguous = {cat_id: index for index, cat_id in class_id_map(coco).items()}
    image_ids = sorted(coco.getImgIds())

    def generate(index):
        return example_arrays(coco, image_ids[int(index)], image_dir, contiguous, with_masks, source)

    shapes = [[], [], [None, 4], [None], [None]] + ([[None, None, None]] if with_masks else [])
    dtypes = [tf.string, tf.int64, tf.float32, tf.int32, tf.bool] + ([tf.uint8] if with_masks else [])

    def load(index):
        values = tf.numpy_function(generate, [index], dtypes, stateful=False)
        for value, shape in zip(values, shapes):
            value.set_shape(shape)
        image = tf.io.decode_image(values[0], channels=3, expand_animations=False)
        return (image, *values[1:5], values[5] if with_masks else None)

    return len(image_ids), load


def ssd_coco_dataset(
    annotation_file,
    image_dir,
    image_size,
    max_instances,
    batch_size,
    training=True,
    mask_stride=None,
    shuffle_buffer=64,
    seed=0,
    augmentation=None,
    drop_remainder=None,
    num_classes=None,
    strict=False,
):
    """``(images, targets)`` batches of a COCO json + image folder with SSD's augmentation
    (``training``) or SSD's test transform (warp resize only), in the target contract of
    ``keras_cvx.data.coco``.

    Args:
        annotation_file, image_dir: the COCO json and its image folder.
        image_size: ``(height, width)`` of the warped images.
        max_instances: targets are padded/truncated to this many instances.
        batch_size: images per batch.
        training: shuffle, augment (``augmentation``, default ``SSDAugmentation(image_size)``)
            and repeat forever; otherwise warp-resize each image once, in id order, with
            ``image_info["scale_y"]`` next to ``scale`` (the horizontal scale): a box of the
            warped image maps back with ``x / scale`` and ``y / scale_y``.
        mask_stride: ``None`` (no masks) or the stride of the mask grid.
        shuffle_buffer: shuffle buffer size when training.
        seed: of the shuffle and of the per-image augmentation seeds ``[seed, i]`` (``i``
            counts the images the dataset has produced).
        augmentation: an ``SSDAugmentation`` (its ``output_size`` and ``mask_stride`` must
            match ``image_size`` and ``mask_stride``).
        drop_remainder: defaults to ``training``.
        num_classes: when given, a class id ``>= num_classes`` is an error naming the image
            and the annotation (as in ``keras_cvx.data.coco.coco_dataset``).
        strict: the json's problems (``keras_cvx.data.coco.check_annotations``) are a
            ``ValueError`` instead of one ``DataWarning``.

    Example::

        from keras_cvx.data.real_images import photos_dataset
        train = ssd_coco_dataset(*photos_dataset(), image_size=(300, 300), max_instances=8, batch_size=2)
        images, targets = next(iter(train))     # (2, 300, 300, 3); targets["boxes"]: (2, 8, 4)
    """
    size = _size("image_size", image_size)
    require_positive_int("max_instances", max_instances)
    require_positive_int("batch_size", batch_size)
    _check_mask_stride(mask_stride, size)
    stride = mask_stride or 1
    if not training:
        augmentation = SSDAugmentation(size, stride, photometric=False, expand_probability=0.0, crop=False,
                                       flip_probability=0.0)
    elif augmentation is None:
        augmentation = SSDAugmentation(size, stride)
    if augmentation.output_size != size or augmentation.mask_stride != stride:
        raise ValueError(
            f"`augmentation` makes {augmentation.output_size} images with mask stride "
            f"{augmentation.mask_stride}; the dataset needs {size} and {stride}."
        )
    count, load = coco_examples(annotation_file, image_dir, with_masks=mask_stride is not None,
                                max_instances=max_instances, num_classes=num_classes, strict=strict)

    @_no_autograph
    def to_example(position, index):
        image, image_id, boxes, labels, crowd, masks = load(index)
        element_seed = tf.stack([tf.cast(seed, tf.int64), position])
        image, targets = prepare_ssd_example(
            image, image_id, boxes, labels, crowd, masks, element_seed, augmentation, max_instances
        )
        if not training:
            height = tf.cast(targets["image_info"]["height"], tf.float32)
            targets["image_info"]["scale_y"] = size[0] / height
        return image, targets

    dataset = tf.data.Dataset.range(count)
    if training:
        dataset = dataset.shuffle(max(1, shuffle_buffer), seed=seed, reshuffle_each_iteration=True).repeat()
    dataset = dataset.enumerate().map(to_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    drop = training if drop_remainder is None else drop_remainder
    return dataset.batch(batch_size, drop_remainder=drop).prefetch(tf.data.AUTOTUNE)


def write_augmentation_grid(path, annotation_file=None, image_dir=None, output_size=(300, 300), samples=5,
                            seed=0, augmentation=None):
    """Writes a PNG grid of SSD-augmented samples with their boxes and class names drawn.

    One row per image of the COCO json (default: the two bundled photographs,
    ``keras_cvx.data.real_images.photos_dataset``); the first column is the warp resize
    alone, the next ``samples`` columns are augmentations with seeds ``[seed, 0..samples-1]``.

    Returns ``path``.

    Example::

        write_augmentation_grid("ssd_augmentation.png")   # 2 rows x 6 columns of 300x300 tiles
    """
    from keras_cvx.data.real_images import photos_dataset
    from keras_cvx.visualize import draw_detections, save_png

    if annotation_file is None:
        annotation_file, image_dir = photos_dataset()
    size = _size("output_size", output_size)
    require_positive_int("samples", samples)
    signature = [tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([None, 4], tf.float32),
                 tf.TensorSpec([None], tf.int32), tf.TensorSpec([2], tf.int64)]
    augment = tf.function(augmentation or SSDAugmentation(size), input_signature=signature, autograph=False)
    plain = tf.function(SSDAugmentation(size, photometric=False, expand_probability=0.0, crop=False, flip_probability=0.0),
                        input_signature=signature, autograph=False)
    with open(annotation_file) as f:
        names = {c["id"]: c["name"] for c in json.load(f)["categories"]}
    coco = load_coco(annotation_file)
    class_names = [names[cat_id] for _, cat_id in sorted(class_id_map(coco).items())]
    count, load = coco_examples(annotation_file, image_dir)
    rows = []
    for index in range(count):
        image, image_id, boxes, labels, crowd, _ = load(tf.constant(index, tf.int64))
        keep = tf.logical_not(crowd) & (labels >= 0)
        boxes, labels = tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep)
        tiles = []
        for column in range(samples + 1):
            transform = plain if column == 0 else augment
            out, out_boxes, out_labels, _ = transform(image, boxes, labels, tf.constant([seed, column - 1], tf.int64))
            tiles.append(draw_detections(out.numpy(), out_boxes.numpy(), out_labels.numpy(), class_names=class_names))
        rows.append(np.concatenate(tiles, axis=1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return save_png(path, np.concatenate(rows, axis=0))
