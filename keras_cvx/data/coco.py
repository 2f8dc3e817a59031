"""COCO json (+ image folder) -> ``tf.data``, and the target contract every model here uses.

Target contract. Each dataset element is ``(images, targets)``:

- ``images``: float32 ``[B, H, W, 3]`` in 0..255 (models normalise inside), the keep-aspect
  resized image padded with zeros at the bottom/right (``transforms.resize_and_pad``).
- ``targets["boxes"]``: float32 ``[B, max_instances, 4]``, ``xyxy`` absolute pixels in the
  resized/padded image; padding rows are zeros.
- ``targets["labels"]``: int32 ``[B, max_instances]``, contiguous 0-based class ids
  (``class_id_map`` maps them back to COCO category ids), ``-1`` for padding.
- ``targets["masks"]`` (only with ``mask_stride``): uint8 ``[B, max_instances, H / s, W / s]``
  with values 0/1; the instance mask resized with the image straight onto the stride-``s``
  grid (bilinear, threshold 0.5; a grid cell covers image pixels ``[s*i, s*(i+1))``).
- ``targets["image_info"]``: dict of ``image_id`` int64 ``[B]``, ``height``/``width`` int32
  ``[B]`` (original size) and ``scale`` float32 ``[B]``: an original pixel coordinate ``p``
  is ``p * scale`` in the padded image. ``keras_cvx.evaluation.COCOEvaluator`` reads it.

Decisions on bad or special data (the same for the TFRecord input):

- Crowd annotations (``iscrowd=1``) are excluded from the targets (they stay in the json,
  where COCOeval uses them to ignore detections on crowds).
- Boxes are clipped to the image; boxes that are then empty (zero area, entirely outside
  the image) or non-finite are dropped. Images without objects give all-padding targets.
- Annotations beyond ``max_instances`` are dropped (the first ones in the json are kept).
- Horizontal flip (``training=True``) happens on the original image, before the resize, with
  probability 0.5 drawn from a seeded ``tf.data.Dataset.random`` stream.
"""

import json
import os

import numpy as np
import tensorflow as tf
from pycocotools.coco import COCO

from keras_cvx.data.transforms import clip_boxes, horizontal_flip, resize_and_pad, scale_boxes
from keras_cvx.validation import require_positive_int


def load_coco(annotation_file):
    """Loads a COCO json with pycocotools; a missing, truncated or invalid file raises a
    ``ValueError`` naming the file."""
    try:
        with open(annotation_file) as f:
            dataset = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"Cannot read COCO annotation file {annotation_file!r}: {error}") from error
    if not isinstance(dataset, dict) or not {"images", "categories"} <= set(dataset):
        raise ValueError(
            f"COCO annotation file {annotation_file!r} must be a json object with 'images' and "
            "'categories' (and 'annotations')."
        )
    dataset.setdefault("annotations", [])
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def class_id_map(coco):
    """``{contiguous_id: category_id}`` for a ``COCO`` object (or json path), categories
    sorted by id: the mapping the pipeline and the evaluator use by default."""
    if not isinstance(coco, COCO):
        coco = load_coco(coco)
    return {index: int(cat_id) for index, cat_id in enumerate(sorted(coco.getCatIds()))}


def coco_dataset(
    annotation_file,
    image_dir,
    image_size,
    max_instances,
    batch_size,
    training,
    mask_stride=None,
    shuffle_buffer=64,
    seed=0,
    drop_remainder=None,
):
    """A ``tf.data.Dataset`` of ``(images, targets)`` batches (see the module docstring).

    Args:
        annotation_file: path of a COCO instances json.
        image_dir: folder holding the images named by ``file_name``.
        image_size: ``(height, width)`` of the padded images.
        max_instances: targets are padded/truncated to this many instances.
        batch_size: images per batch.
        training: shuffle, flip at random, repeat forever, and drop the last partial batch.
        mask_stride: ``None`` (no masks) or a positive int dividing both image sides.
        shuffle_buffer: shuffle buffer size when training.
        seed: seed of the shuffle and the flips.
        drop_remainder: defaults to ``training``.
    """
    coco = load_coco(annotation_file)
    require_positive_int("max_instances", max_instances)
    require_positive_int("batch_size", batch_size)
    _check_mask_stride(mask_stride, image_size)
    contiguous = {cat_id: index for index, cat_id in class_id_map(coco).items()}
    image_ids = sorted(coco.getImgIds())
    with_masks = mask_stride is not None

    def generate(index):
        image_id = image_ids[int(index)]
        info = coco.imgs[image_id]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        boxes = np.array([_xywh_to_xyxy(a.get("bbox")) for a in anns], np.float32).reshape(-1, 4)
        labels = np.array([contiguous.get(a.get("category_id"), -1) for a in anns], np.int32)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
        path = os.path.join(image_dir, info["file_name"])
        with open(path, "rb") as f:
            encoded = f.read()
        out = [encoded, np.int64(image_id), boxes, labels, crowd]
        if with_masks:
            h, w = int(info["height"]), int(info["width"])
            masks = [_ann_mask(coco, a, h, w) for a in anns]
            out.append(np.stack(masks).astype(np.uint8) if masks else np.zeros((0, h, w), np.uint8))
        return tuple(out)

    signature = [
        tf.TensorSpec([], tf.string),
        tf.TensorSpec([], tf.int64),
        tf.TensorSpec([None, 4], tf.float32),
        tf.TensorSpec([None], tf.int32),
        tf.TensorSpec([None], tf.bool),
    ]
    if with_masks:
        signature.append(tf.TensorSpec([None, None, None], tf.uint8))

    def py_load(index):
        return tf.numpy_function(generate, [index], [s.dtype for s in signature], stateful=False)

    def to_example(index, flip):
        values = py_load(index)
        for value, spec in zip(values, signature):
            value.set_shape(spec.shape)
        encoded, image_id, boxes, labels, crowd = values[:5]
        masks = values[5] if with_masks else None
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        return prepare_example(
            image, image_id, boxes, labels, crowd, masks, flip, image_size, max_instances, mask_stride
        )

    dataset = tf.data.Dataset.range(len(image_ids))
    if training:
        dataset = dataset.shuffle(max(1, shuffle_buffer), seed=seed, reshuffle_each_iteration=True).repeat()
    flips = tf.data.Dataset.random(seed=seed).map(lambda r: tf.logical_and(training, r % 2 == 0))
    dataset = tf.data.Dataset.zip((dataset, flips))
    dataset = dataset.map(to_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    drop = training if drop_remainder is None else drop_remainder
    return dataset.batch(batch_size, drop_remainder=drop).prefetch(tf.data.AUTOTUNE)


def prepare_example(image, image_id, boxes, labels, crowd, masks, flip, image_size, max_instances, mask_stride):
    """Turns one decoded example into ``(image, targets)`` of the contract (unbatched).

    Args:
        image: uint8 ``[h, w, 3]``; ``boxes``: float32 ``[n, 4]`` ``xyxy`` original pixels;
        labels: int32 ``[n]`` contiguous ids (negative = unknown, dropped); crowd: bool ``[n]``;
        masks: uint8 ``[n, h, w]`` or ``None``; flip: bool scalar tensor.
    """
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    finite = tf.reduce_all(tf.math.is_finite(boxes), axis=-1)
    boxes = clip_boxes(tf.where(finite[:, None], boxes, tf.zeros_like(boxes)), (height, width))
    keep = (
        finite
        & tf.logical_not(crowd)
        & (labels >= 0)
        & (boxes[:, 2] > boxes[:, 0])
        & (boxes[:, 3] > boxes[:, 1])
    )
    boxes = tf.boolean_mask(boxes, keep)[:max_instances]
    labels = tf.boolean_mask(labels, keep)[:max_instances]
    if masks is not None:
        masks = tf.boolean_mask(masks, keep)[:max_instances]

    image, boxes = tf.cond(flip, lambda: horizontal_flip(image, boxes), lambda: (image, boxes))
    if masks is not None:
        masks = tf.cond(flip, lambda: tf.reverse(masks, axis=[2]), lambda: masks)

    padded, scale = resize_and_pad(image, image_size)
    boxes = scale_boxes(boxes, scale)
    num = tf.shape(labels)[0]
    pad = max_instances - num
    targets = {
        "boxes": tf.ensure_shape(tf.pad(boxes, [[0, pad], [0, 0]]), [max_instances, 4]),
        "labels": tf.ensure_shape(tf.pad(labels, [[0, pad]], constant_values=-1), [max_instances]),
        "image_info": {
            "image_id": tf.cast(image_id, tf.int64),
            "height": tf.cast(height, tf.int32),
            "width": tf.cast(width, tf.int32),
            "scale": tf.cast(scale, tf.float32),
        },
    }
    if masks is not None:
        targets["masks"] = _resize_masks(masks, height, width, scale, image_size, mask_stride, pad, max_instances)
    return padded, targets


def _resize_masks(masks, height, width, scale, image_size, stride, pad, max_instances):
    grid_h, grid_w = image_size[0] // stride, image_size[1] // stride
    new_h = tf.clip_by_value(
        tf.cast(tf.round(tf.cast(height, tf.float32) * scale / stride), tf.int32), 1, grid_h
    )
    new_w = tf.clip_by_value(
        tf.cast(tf.round(tf.cast(width, tf.float32) * scale / stride), tf.int32), 1, grid_w
    )
    resized = tf.image.resize(tf.cast(masks, tf.float32)[..., None], tf.stack([new_h, new_w]), method="bilinear")
    binary = tf.cast(resized[..., 0] >= 0.5, tf.uint8)
    binary = tf.pad(binary, [[0, pad], [0, grid_h - new_h], [0, grid_w - new_w]])
    return tf.ensure_shape(binary, [max_instances, grid_h, grid_w])


def _check_mask_stride(mask_stride, image_size):
    if mask_stride is None:
        return
    require_positive_int("mask_stride", mask_stride)
    if not isinstance(image_size, (tuple, list)) or any(int(v) % mask_stride for v in image_size):
        raise ValueError(f"`mask_stride` ({mask_stride}) must divide both sides of image_size {image_size!r}.")


def _xywh_to_xyxy(bbox):
    """COCO ``[x, y, w, h]`` -> ``[x1, y1, x2, y2]``; a missing or malformed bbox becomes NaN
    (dropped downstream)."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return [np.nan] * 4
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def _ann_mask(coco, ann, height, width):
    """The annotation's mask at the image size, zeros when it has no usable segmentation."""
    segmentation = ann.get("segmentation")
    if not segmentation:
        return np.zeros((height, width), np.uint8)
    try:
        mask = coco.annToMask(ann)
    except (TypeError, ValueError, IndexError, KeyError):
        return np.zeros((height, width), np.uint8)
    if mask.shape != (height, width):
        return np.zeros((height, width), np.uint8)
    return mask.astype(np.uint8)
