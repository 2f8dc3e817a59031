"""SSD augmentation (keras_cvx.data.ssd_augment) against NumPy formulations of each step and
of the whole pipeline, and box/content agreement on images with drawn boxes."""

import colorsys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_cvx.data.real_images import coins_dataset, photos_dataset
from keras_cvx.data.ssd_augment import (
    SSD_PIXEL_MEAN,
    SSDAugmentation,
    adjust_photometric,
    prepare_ssd_example,
    select_crop,
    ssd_coco_dataset,
    warp_window,
    write_augmentation_grid,
)
from tests.layers.test_neighbor_erasing import numpy_bilinear_resize

PERMUTATIONS = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]


def numpy_params(params):
    return {k: (numpy_params(v) if isinstance(v, dict) else np.asarray(v)) for k, v in params.items()}


def numpy_photometric(image, p):
    """ssd.pytorch's PhotometricDistort order with Caffe's clipping, HSV by Python's colorsys."""
    x = np.clip(image.astype(np.float64) + float(p["brightness"]), 0, 255)
    if p["contrast_first"]:
        x = np.clip(x * float(p["contrast"]), 0, 255)
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            h, s, v = colorsys.rgb_to_hsv(*(x[i, j] / 255.0))
            h = (h + float(p["hue"]) / 360.0) % 1.0
            s = min(max(s * float(p["saturation"]), 0.0), 1.0)
            out[i, j] = np.array(colorsys.hsv_to_rgb(h, s, v)) * 255.0
    x = np.clip(out, 0, 255)
    if not p["contrast_first"]:
        x = np.clip(x * float(p["contrast"]), 0, 255)
    return x[..., list(PERMUTATIONS[int(p["permutation"])])]


def numpy_resize(image, height, width):
    """Bilinear resize with half-pixel centres (``tf.image.resize``) of one [h, w, C] image."""
    return numpy_bilinear_resize(image[None], height, width)[0]


def numpy_window(image, window, fill):
    """The window ``[x1, y1, x2, y2]`` of ``image`` on an infinite canvas of ``fill``."""
    x1, y1, x2, y2 = (int(v) for v in window)
    out = np.empty((y2 - y1, x2 - x1, image.shape[2]))
    out[:] = fill
    ys, xs = slice(max(y1, 0), min(y2, image.shape[0])), slice(max(x1, 0), min(x2, image.shape[1]))
    if ys.start < ys.stop and xs.start < xs.stop:
        out[ys.start - y1 : ys.stop - y1, xs.start - x1 : xs.stop - x1] = image[ys, xs]
    return out


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def numpy_select_crop(trials, boxes, min_ious, choice):
    """Caffe SSD's batch samplers: the whole image, then per sampler the first of its trials
    with some box at IoU >= its minimum (any IoU for None) and some box centre strictly inside;
    one candidate picked uniformly."""
    candidates = [(0, None)]
    for k, minimum in enumerate(min_ious):
        for window in trials[k]:
            centres = [window[0] < (b[0] + b[2]) / 2 < window[2] and window[1] < (b[1] + b[3]) / 2 < window[3] for b in boxes]
            overlaps = [iou(window, b) for b in boxes]
            if boxes.size and any(centres) and (minimum is None or max(overlaps) >= minimum):
                candidates.append((k + 1, window))
                break
    return candidates[min(int(choice * len(candidates)), len(candidates) - 1)]


def numpy_augment(image, boxes, labels, masks, params, output_size, stride, fill):
    """The whole pipeline given the draws: photometric, a materialised expanded canvas,
    crop (keep boxes whose centre is inside unless the whole canvas is kept), clip, warp
    resize, flip."""
    out_h, out_w = output_size
    canvas_h, canvas_w, top, left = (int(v) for v in params["canvas"])
    distorted = numpy_photometric(image, params["photometric"])
    canvas = np.empty((canvas_h, canvas_w, 3))
    canvas[:] = fill
    canvas[top : top + image.shape[0], left : left + image.shape[1]] = distorted
    x1, y1, x2, y2 = (int(v) for v in params["window"])
    out = numpy_resize(canvas[y1:y2, x1:x2], out_h, out_w)
    shifted = boxes + [left, top, left, top]
    if int(params["crop_index"]) == 0:
        keep = np.ones(len(boxes), bool)
    else:
        cx, cy = shifted[:, 0::2].mean(1), shifted[:, 1::2].mean(1)
        keep = (x1 < cx) & (cx < x2) & (y1 < cy) & (cy < y2)
    kept = shifted[keep]
    kept = np.stack([np.clip(kept[:, 0], x1, x2), np.clip(kept[:, 1], y1, y2), np.clip(kept[:, 2], x1, x2), np.clip(kept[:, 3], y1, y2)], 1)
    kept = (kept - [x1, y1, x1, y1]) * ([out_w / (x2 - x1), out_h / (y2 - y1)] * 2)
    mask_canvas = np.zeros((canvas_h, canvas_w, len(masks)))
    mask_canvas[top : top + image.shape[0], left : left + image.shape[1]] = masks.transpose(1, 2, 0)
    grid = numpy_resize(mask_canvas[y1:y2, x1:x2], out_h // stride, out_w // stride)
    out_masks = (grid >= 0.5).transpose(2, 0, 1)[keep]
    if params["flip"]:
        out, out_masks = out[:, ::-1], out_masks[:, :, ::-1]
        kept = np.stack([out_w - kept[:, 2], kept[:, 1], out_w - kept[:, 0], kept[:, 3]], 1)
    return out, kept, labels[keep], out_masks


def _rectangles_image(height, width, rectangles, colors, background=(0, 0, 0)):
    image = np.empty((height, width, 3), np.uint8)
    image[:] = background
    masks = np.zeros((len(rectangles), height, width), np.uint8)
    for index, ((x1, y1, x2, y2), color) in enumerate(zip(rectangles, colors)):
        image[y1:y2, x1:x2] = color
        masks[index, y1:y2, x1:x2] = 1
    return image, masks


# ------------------------------------------------------------------------------- each step
@pytest.mark.parametrize("seed", range(6))
def test_photometric_matches_numpy(seed):
    image = np.random.default_rng(seed).uniform(0, 255, size=(5, 7, 3)).astype(np.float32)
    for augmentation in (SSDAugmentation(8), SSDAugmentation(8, distort_probability=1.0, channel_swap_probability=1.0)):
        params = augmentation.sample_photometric(tf.constant([seed, 11]))
        actual = adjust_photometric(image, params).numpy()
        np.testing.assert_allclose(actual, numpy_photometric(image, numpy_params(params)), atol=2e-3)


def test_photometric_draws_follow_ssd_ranges():
    sample = tf.function(SSDAugmentation(8, channel_swap_probability=0.5).sample_photometric)
    draws = [numpy_params(sample(tf.constant([3, i]))) for i in range(400)]
    brightness = np.array([d["brightness"] for d in draws])
    contrast = np.array([d["contrast"] for d in draws])
    saturation = np.array([d["saturation"] for d in draws])
    hue = np.array([d["hue"] for d in draws])
    for values, identity, low, high in ((brightness, 0, -32, 32), (contrast, 1, 0.5, 1.5), (saturation, 1, 0.5, 1.5), (hue, 0, -18, 18)):
        applied = values[values != identity]
        assert 0.42 < len(applied) / len(values) < 0.58  # p = 0.5 each
        assert low <= applied.min() < low + 0.15 * (high - low) and high - 0.15 * (high - low) < applied.max() <= high
    assert 0.42 < np.mean([d["contrast_first"] for d in draws]) < 0.58
    permutations = np.array([d["permutation"] for d in draws])
    assert 0.42 < np.mean(permutations != 0) < 0.58 + 1 / 6 and set(permutations) == set(range(6))
    default = tf.function(SSDAugmentation(8).sample_photometric)
    assert all(int(default(tf.constant([3, i]))["permutation"]) == 0 for i in range(20))


@pytest.mark.parametrize("window", [(2, 1, 11, 8), (-5, -3, 20, 14), (-30, -12, 4, 2), (6, 4, 7, 5), (-2, 0, 13, 9)])
@pytest.mark.parametrize("output_size", [(5, 7), (24, 31)])
def test_warp_window_is_pad_crop_resize(window, output_size):
    image = np.random.default_rng(1).uniform(0, 255, size=(9, 13, 3)).astype(np.float32)
    actual = warp_window(image, window, output_size, SSD_PIXEL_MEAN).numpy()
    expected = numpy_resize(numpy_window(image.astype(np.float64), window, SSD_PIXEL_MEAN), *output_size)
    np.testing.assert_allclose(actual, expected, atol=2e-3)
    # and the TensorFlow resize of the materialised window
    reference = tf.image.resize(numpy_window(image, window, SSD_PIXEL_MEAN).astype(np.float32), output_size).numpy()
    np.testing.assert_allclose(actual, reference, atol=2e-3)


def test_expand_draws():
    sample = tf.function(SSDAugmentation(8).sample_expand)
    draws = np.array([sample(tf.constant([5, i]), 40, 60).numpy() for i in range(300)])
    canvas_h, canvas_w, top, left = draws.T
    expanded = canvas_h > 40
    assert 0.42 < expanded.mean() < 0.58
    ratio = canvas_h[expanded] / 40
    assert 1 < ratio.min() < 1.2 and 3.8 < ratio.max() <= 4 and 2.25 < ratio.mean() < 2.75  # U(1, 4)
    np.testing.assert_allclose(canvas_w / 60, canvas_h / 40, atol=0.05)
    assert np.all((top >= 0) & (top <= canvas_h - 40) & (left >= 0) & (left <= canvas_w - 60))
    assert np.all(top[~expanded] == 0) and np.all(left[~expanded] == 0)
    never = SSDAugmentation(8, expand_probability=0.0)
    for i in range(5):
        np.testing.assert_array_equal(never.sample_expand(tf.constant([5, i]), 40, 60).numpy(), [40, 60, 0, 0])


def test_crop_trials_respect_scale_and_aspect():
    augmentation = SSDAugmentation(8)
    trials, choice = augmentation.crop_trials(tf.constant([2, 9]), 200, 300)
    trials = trials.numpy()
    assert trials.shape == (6, 50, 4) and 0 <= float(choice) < 1
    width, height = (trials[..., 2] - trials[..., 0]) / 300, (trials[..., 3] - trials[..., 1]) / 200
    assert np.all((trials[..., 0] >= 0) & (trials[..., 1] >= 0) & (trials[..., 2] <= 300) & (trials[..., 3] <= 200))
    scale, aspect = np.sqrt(width * height), width / height  # relative to the canvas, as Caffe
    assert scale.min() > 0.3 - 0.01 and scale.max() <= 1.0 and scale.min() < 0.4 and scale.max() > 0.9
    assert aspect.min() > 0.5 - 0.02 and aspect.max() < 2.0 + 0.05


@pytest.mark.parametrize("seed", range(8))
def test_select_crop_matches_numpy_caffe_sampler(seed):
    rng = np.random.default_rng(seed)
    augmentation = SSDAugmentation(8)
    trials, choice = augmentation.crop_trials(tf.constant([seed, 1]), 120, 160)
    corners = rng.uniform(0, [160, 120], size=(rng.integers(0, 5), 2, 2))
    boxes = np.concatenate([corners.min(1), corners.max(1) + 4], 1).astype(np.float32)
    index, window = select_crop(trials, boxes.reshape(-1, 4), augmentation.min_ious, choice)
    expected_index, expected_window = numpy_select_crop(trials.numpy(), boxes, augmentation.min_ious, float(choice))
    assert int(index) == expected_index
    if expected_index:
        np.testing.assert_array_equal(window.numpy(), expected_window)


def test_crop_choice_is_uniform_over_the_samplers_that_found_a_window():
    """A box covering the whole canvas and samplers that always find a window (IoU = area
    fraction >= 0.3 within 50 trials): the whole canvas and the three samplers each come up
    about a quarter of the time. With the default samplers, 0.9 is the one that fails most."""
    boxes = tf.constant([[0.0, 0.0, 160.0, 120.0]])
    sample = tf.function(SSDAugmentation(8, expand_probability=0.0, min_ious=(0.1, 0.3, None)).sample)
    indices = np.array([int(sample(tf.constant([7, i]), boxes, 120, 160)["crop_index"]) for i in range(280)])
    counts = np.bincount(indices, minlength=4)
    assert counts.sum() == 280 and counts.min() > 45 and counts.max() < 95, counts
    sample = tf.function(SSDAugmentation(8, expand_probability=0.0).sample)
    boxes = tf.constant([[40.0, 30.0, 120.0, 90.0]])
    counts = np.bincount([int(sample(tf.constant([7, i]), boxes, 120, 160)["crop_index"]) for i in range(140)], minlength=7)
    assert counts[5] == counts.min() and counts[[0, 1, 2, 3, 6]].min() > 10, counts


# ---------------------------------------------------------------------------- the pipeline
@pytest.mark.parametrize("seed", range(10))
def test_whole_pipeline_matches_numpy_given_the_draws(seed):
    rng = np.random.default_rng(seed)
    image = rng.uniform(0, 255, size=(40, 52, 3)).astype(np.float32)
    boxes = np.array([[3, 4, 20, 30], [25, 10, 50, 38], [10, 22, 30, 39]], np.float32)
    labels = np.array([4, 0, 2], np.int32)
    masks = np.zeros((3, 40, 52), np.uint8)
    for m, (x1, y1, x2, y2) in zip(masks, boxes.astype(int)):
        m[y1:y2, x1:x2] = 1
    augmentation = SSDAugmentation((24, 32), mask_stride=4, channel_swap_probability=0.5)
    params = augmentation.sample(tf.constant([seed, 4]), boxes, 40, 52)
    out, out_boxes, out_labels, out_masks = augmentation.apply(image, boxes, labels, params, masks)
    expected = numpy_augment(image, boxes, labels, masks, numpy_params(params), (24, 32), 4, SSD_PIXEL_MEAN)
    np.testing.assert_allclose(out.numpy(), expected[0], atol=0.02)
    np.testing.assert_allclose(out_boxes.numpy(), expected[1], atol=1e-3)
    np.testing.assert_array_equal(out_labels.numpy(), expected[2])
    assert out_masks.shape == expected[3].shape and out_masks.dtype == tf.uint8
    assert np.mean(out_masks.numpy() != expected[3]) < 0.01  # threshold ties may round apart


def test_boxes_follow_the_drawn_content():
    """Coloured rectangles on black: after every augmentation (photometric off, so colours
    stay), each output box is filled with its rectangle's colour, the pixels just outside
    its edges are not, its mask covers it, and a dropped box's centre is outside the crop."""
    rectangles = [(10, 12, 50, 40), (70, 20, 130, 70), (30, 60, 60, 110), (100, 85, 150, 112)]
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    image, masks = _rectangles_image(120, 160, rectangles, colors)
    boxes = np.array(rectangles, np.float32)
    labels = np.arange(4, dtype=np.int32)
    augmentation = SSDAugmentation((96, 96), mask_stride=2, photometric=False)
    sample, apply = tf.function(augmentation.sample), tf.function(augmentation.apply)
    crops = expansions = checked = 0
    for seed in range(40):
        params = sample(tf.constant([11, seed]), boxes, 120, 160)
        crops += int(params["crop_index"]) > 0
        expansions += int(params["canvas"][0]) > 120
        out, out_boxes, out_labels, out_masks = (t.numpy() for t in apply(image, boxes, labels, params, masks))
        for box, label, mask in zip(out_boxes, out_labels, out_masks):
            x1, y1, x2, y2 = box
            color = np.array(colors[label])
            if x2 - x1 > 6 and y2 - y1 > 6:
                inside = out[int(np.ceil(y1)) + 2 : int(y2) - 2, int(np.ceil(x1)) + 2 : int(x2) - 2]
                np.testing.assert_allclose(inside.reshape(-1, 3).mean(0), color, atol=2.0)
                checked += 1
            for ring in (out[int(y1) - 3, int(x1) : int(x2)] if y1 >= 3 else None,
                         out[int(np.ceil(y2)) + 2, int(x1) : int(x2)] if y2 <= 96 - 3 else None,
                         out[int(y1) : int(y2), int(x1) - 3] if x1 >= 3 else None,
                         out[int(y1) : int(y2), int(np.ceil(x2)) + 2] if x2 <= 96 - 3 else None):
                if ring is not None and len(ring):
                    assert np.abs(ring - color).max(axis=-1).min() > 40  # no pixel of this colour
            rows, cols = np.nonzero(mask)
            np.testing.assert_allclose([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], box / 2, atol=1.0)
        for label in set(labels) - set(out_labels):  # dropped: its centre is outside the window
            x1, y1, x2, y2 = boxes[label] + np.tile(params["canvas"].numpy()[[3, 2]], 2)
            wx1, wy1, wx2, wy2 = params["window"].numpy()
            assert not (wx1 < (x1 + x2) / 2 < wx2 and wy1 < (y1 + y2) / 2 < wy2)
    assert crops > 20 and expansions > 10 and checked > 60


def test_prepare_ssd_example_cleans_pads_and_truncates():
    image = tf.zeros([30, 40, 3], tf.uint8)
    boxes = tf.constant([[1, 1, 20, 20], [5, 5, 5, 9], [2, 2, 30, 25], [np.nan, 0, 3, 3], [0, 0, 35, 28], [3, 3, 9, 9]], tf.float32)
    labels = tf.constant([0, 1, 2, 3, -1, 4])
    crowd = tf.constant([False, False, True, False, False, False])
    masks = tf.ones([6, 30, 40], tf.uint8)
    plain = SSDAugmentation((16, 20), mask_stride=4, photometric=False, expand_probability=0.0, crop=False, flip_probability=0.0)
    out, targets = prepare_ssd_example(image, tf.constant(7, tf.int64), boxes, labels, crowd, masks, tf.constant([0, 0]), plain, 4)
    assert out.shape == (16, 20, 3) and out.dtype == tf.float32
    np.testing.assert_array_equal(targets["labels"].numpy(), [0, 4, -1, -1])  # empty, crowd, NaN, unknown dropped
    np.testing.assert_allclose(targets["boxes"].numpy()[:2], np.array([[1, 1, 20, 20], [3, 3, 9, 9]]) * ([0.5, 16 / 30] * 2), rtol=1e-6)
    np.testing.assert_array_equal(targets["boxes"].numpy()[2:], 0.0)
    assert targets["masks"].shape == (4, 4, 5) and targets["masks"].numpy()[2:].sum() == 0
    assert int(targets["image_info"]["image_id"]) == 7 and int(targets["image_info"]["width"]) == 40
    _, truncated = prepare_ssd_example(image, tf.constant(7, tf.int64), boxes, labels, crowd, None, tf.constant([0, 0]), plain, 1)
    np.testing.assert_array_equal(truncated["labels"].numpy(), [0])
    assert "masks" not in truncated


def test_image_without_boxes_keeps_the_whole_canvas():
    augmentation = SSDAugmentation((16, 16))
    for seed in range(10):
        params = augmentation.sample(tf.constant([1, seed]), tf.zeros([0, 4]), 20, 30)
        canvas = params["canvas"].numpy()
        assert int(params["crop_index"]) == 0
        np.testing.assert_array_equal(params["window"].numpy(), [0, 0, canvas[1], canvas[0]])
        out, out_boxes, out_labels, _ = augmentation.apply(tf.zeros([20, 30, 3]), tf.zeros([0, 4]), tf.zeros([0], tf.int32), params)
        assert out.shape == (16, 16, 3) and out_boxes.shape == (0, 4) and np.all(np.isfinite(out.numpy()))


# ------------------------------------------------------------------------------ data sets
def test_dataset_is_reproducible_and_follows_the_contract():
    annotations, images = photos_dataset()

    def first_batches(seed):
        dataset = ssd_coco_dataset(annotations, images, (64, 64), 5, 2, seed=seed)
        return [(x.numpy(), t["boxes"].numpy(), t["labels"].numpy()) for x, t in dataset.take(3)]

    a, b, c = first_batches(3), first_batches(3), first_batches(4)
    for (xa, ba, la), (xb, bb, lb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ba, bb)
        np.testing.assert_array_equal(la, lb)
    assert any(not np.array_equal(xa, xc) for (xa, _, _), (xc, _, _) in zip(a, c))
    images_, boxes, labels = a[0]
    assert images_.shape == (2, 64, 64, 3) and boxes.shape == (2, 5, 4) and labels.shape == (2, 5)
    assert np.all(boxes[labels < 0] == 0) and np.all((boxes >= 0) & (boxes <= 64))


def test_evaluation_dataset_warps_and_maps_back():
    annotations, images = photos_dataset()
    batch = next(iter(ssd_coco_dataset(annotations, images, (60, 90), 4, 2, training=False)))
    info = batch[1]["image_info"]
    np.testing.assert_allclose(info["scale"].numpy(), [90 / 451, 90 / 600], rtol=1e-6)
    np.testing.assert_allclose(info["scale_y"].numpy(), [60 / 300, 60 / 400], rtol=1e-6)
    # the chelsea photograph's first eye: COCO bbox [134, 80, 72, 70]
    np.testing.assert_allclose(batch[1]["boxes"].numpy()[0, 0], [134 * 90 / 451, 80 * 0.2, 206 * 90 / 451, 150 * 0.2], rtol=1e-5)
    reference = tf.image.resize(np.asarray(Image.open(f"{images}/chelsea.png").convert("RGB"), np.float32), (60, 90)).numpy()
    np.testing.assert_allclose(batch[0].numpy()[0], reference, atol=0.05)


def test_masks_come_out_on_the_stride_grid():
    annotations, images = coins_dataset()
    dataset = ssd_coco_dataset(annotations, images, (64, 64), 30, 1, mask_stride=4, seed=1)
    _, targets = next(iter(dataset))
    masks, labels = targets["masks"].numpy(), targets["labels"].numpy()
    assert masks.shape == (1, 30, 16, 16) and masks.dtype == np.uint8
    assert np.all(masks[labels < 0] == 0) and masks[labels >= 0].sum() > 0


def test_augmentation_grid_png(tmp_path):
    path = write_augmentation_grid(str(tmp_path / "grid.png"), output_size=(48, 64), samples=2)
    picture = np.asarray(Image.open(path))
    assert picture.shape == (2 * 48, 3 * 64, 3)  # two photographs, plain + two augmentations


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"output_size": 0}, "output_size"),
        ({"mask_stride": 7}, "mask_stride"),
        ({"contrast_range": (1.5, 0.5)}, "contrast_range"),
        ({"hue_delta": 200}, "hue_delta"),
        ({"expand_probability": 2}, "expand_probability"),
        ({"max_expand_ratio": 0.5}, "max_expand_ratio"),
        ({"min_ious": (0.1, 1.5)}, "min_ious"),
        ({"max_trials": 0}, "max_trials"),
        ({"scale_range": (0.3, 1.2)}, "scale_range"),
        ({"aspect_range": (0.0, 2.0)}, "aspect_range"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        SSDAugmentation(**{"output_size": 32, **kwargs})
