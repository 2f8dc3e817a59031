"""COCO json (+ image folder) -> ``tf.data``, and the target contract every model here uses.

Target contract. Each dataset element is ``(images, targets)``:

- ``images``: float32 ``[B, H, W, 3]`` in 0..255 (models normalise inside), the keep-aspect
  resized image padded with zeros at the bottom/right (``transforms.resize_and_pad``).
- ``targets["boxes"]``: float32 ``[B, max_instances, 4]``, ``xyxy`` absolute pixels in the
  resized/padded image; padding rows are zeros.
- ``targets["labels"]``: int32 ``[B, max_instances]``, contiguous 0-based class ids
  (``class_id_map`` maps them back to COCO category ids), ``PADDING_LABEL`` (-1) for padding.
- ``targets["masks"]`` (only with ``mask_stride``): uint8 ``[B, max_instances, H / s, W / s]``
  with values 0/1; the instance mask resized with the image straight onto the stride-``s``
  grid (bilinear, threshold 0.5; a grid cell covers image pixels ``[s*i, s*(i+1))``).
- ``targets["image_info"]``: dict of ``image_id`` int64 ``[B]``, ``height``/``width`` int32
  ``[B]`` (original size) and ``scale`` float32 ``[B]``: an original pixel coordinate ``p``
  is ``p * scale`` in the padded image. ``keras_cvx.evaluation.COCOEvaluator`` reads it.

Decisions on bad or special data (``check_annotations`` implements the counting; the
TFRecord input follows the same rules, see ``keras_cvx.data.tfrecord``):

- Crowd annotations (``iscrowd=1``) are excluded from the targets (they stay in the json,
  where COCOeval uses them to ignore detections on crowds). This is not a problem and is
  not reported.
- Images without objects give all-padding targets (not reported).
- Problems found in the json are counted once, when the dataset is built, and reported in
  one ``DataWarning`` (a ``UserWarning``; its ``counts`` attribute holds the numbers, its
  message the counts and the first offending image id and annotation id of each kind).
  With ``strict=True`` the same report is a ``ValueError`` instead. An annotation is
  counted under the first of these that applies, in this order:

  1. ``duplicate_image_id``: an image id listed more than once in ``images`` (each extra
     entry counts once); pycocotools' index keeps the last entry, and so does the pipeline.
  2. ``unknown_image_id``: an annotation whose ``image_id`` is not in ``images``; ignored.
  3. ``malformed_bbox``: ``bbox`` is not a list of 4 finite numbers (JSON strings such as
     ``"nan"`` or ``"5"`` are not numbers); the annotation is dropped.
  4. ``unknown_category``: ``category_id`` is not in ``categories``; dropped.
  5. (crowd annotations stop here: excluded, not counted.)
  6. ``empty_box``: the box, clipped to the image ``[0, width] x [0, height]``, has zero
     area (zero or negative width/height, or entirely outside the image); dropped. Boxes
     partly outside the image are clipped and kept without being counted.
  7. ``beyond_max_instances``: an image has more than ``max_instances`` annotations left
     after 1-6; the first ``max_instances`` in json order are kept, the rest dropped.
  8. ``unusable_segmentation`` (only when masks are asked for): a kept annotation whose
     ``segmentation`` is missing or empty, or is neither a list of polygons (each at least 3
     points, an even number of finite numbers) nor an RLE dict whose ``size`` is the
     image's ``[height, width]`` and whose ``counts`` (a list, or pycocotools' compressed
     string) are non-negative runs adding up to ``height * width``; the instance is kept
     with an all-zero mask.
- Errors, always (whatever ``strict``):

  - at construction, a ``ValueError``: an unreadable or invalid json (naming the file); an
    image entry without an integer ``id``, a ``file_name`` and positive integer
    ``height``/``width`` (naming the image id); with ``num_classes``, an annotation whose class id (its
    category's index in ``class_id_map``) is ``>= num_classes`` (naming the image id,
    annotation id, category id and ``num_classes``);
  - while iterating, a ``tf.errors.InvalidArgumentError`` whose message names the image
    file and the image id: a missing or unreadable file, bytes that are not a JPEG, PNG,
    GIF, BMP or WebP image, a JPEG without an end-of-image marker after its last scan or a
    PNG without its ``IEND`` chunk (truncated files), and a file whose header size differs
    from the json's ``width``/``height`` (both sizes are named). Damage inside the
    compressed data of a file that passes these checks is only found by
    ``tf.io.decode_image``, whose error does not name the file.
- Horizontal flip (``training=True``) happens on the original image, before the resize, with
  probability 0.5 drawn from a seeded ``tf.data.Dataset.random`` stream.
"""

import io
import json
import math
import numbers
import os
import warnings

import numpy as np
import tensorflow as tf
from PIL import Image
from pycocotools.coco import COCO

from keras_cvx.data.sampling import _check_threshold, apply_repeat_factors, repeat_factors
from keras_cvx.data.transforms import clip_boxes, horizontal_flip, resize_and_pad, scale_boxes
from keras_cvx.validation import PADDING_LABEL, require_positive_int


class DataWarning(UserWarning):
    """Problems in a dataset's annotations that the pipeline works around (see the module
    docstring). ``counts``: ``{kind: number}`` of the kinds found."""

    def __init__(self, message, counts=None):
        super().__init__(message)
        self.counts = dict(counts or {})


# kind -> what happens to it, in the order an annotation is checked (see the module docstring)
PROBLEM_KINDS = {
    "duplicate_image_id": "duplicate image id(s) in 'images' (the last entry is used)",
    "unknown_image_id": "annotation(s) of an image id not in 'images' (ignored)",
    "malformed_bbox": "annotation(s) whose bbox is not 4 finite numbers (dropped)",
    "unknown_category": "annotation(s) of a category_id not in 'categories' (dropped)",
    "empty_box": "box(es) of zero area once clipped to the image (dropped)",
    "beyond_max_instances": "annotation(s) beyond max_instances={max_instances} in their image (dropped)",
    "unusable_segmentation": "kept annotation(s) without a usable segmentation (all-zero mask)",
}

# (offset, bytes) signatures of the formats tf.io.decode_image reads; all of one entry must match
IMAGE_SIGNATURES = {
    "JPEG": ((0, b"\xff\xd8\xff"),),
    "PNG": ((0, b"\x89PNG\r\n\x1a\n"),),
    "GIF": ((0, b"GIF8"),),
    "BMP": ((0, b"BM"),),
    "WebP": ((0, b"RIFF"), (8, b"WEBP")),
}
_PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC, the last 8 bytes of a whole PNG


def load_coco(annotation_file):
    """Loads a COCO json with pycocotools; a missing, truncated or invalid file, or one whose
    images, annotations or categories lack the keys pycocotools indexes by, raises a
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
    try:
        coco.createIndex()
    except (KeyError, TypeError) as error:
        raise ValueError(
            f"COCO annotation file {annotation_file!r}: every image, annotation and category needs an 'id', "
            f"every annotation an 'image_id' and a 'category_id' ({type(error).__name__}: {error})."
        ) from error
    return coco


def class_id_map(coco):
    """``{contiguous_id: category_id}`` for a ``COCO`` object (or json path), categories
    sorted by id: the mapping the pipeline and the evaluator use by default."""
    if not isinstance(coco, COCO):
        coco = load_coco(coco)
    return {index: int(cat_id) for index, cat_id in enumerate(sorted(coco.getCatIds()))}


def check_annotations(coco, max_instances=None, with_masks=False, num_classes=None, strict=False, source=None,
                      stacklevel=2):
    """Counts the problems of a loaded json (the kinds and rules of the module docstring) and
    reports them: one ``DataWarning`` with every count, or with ``strict`` a ``ValueError``;
    nothing when there is none. Returns ``{kind: count}`` of the kinds found.

    Args:
        coco: a ``COCO`` object (``load_coco``).
        max_instances: the targets' number of rows, or ``None`` (not counted).
        with_masks: count unusable segmentations of the kept annotations.
        num_classes: when given, an annotation whose class id is ``>= num_classes`` raises a
            ``ValueError`` (always, not only with ``strict``).
        strict: raise instead of warning.
        source: how the messages name the json (default ``"COCO annotations"``).
        stacklevel: of the warning (2: the caller of this function).

    Raises ``ValueError`` (whatever ``strict``) for an image entry without an integer ``id``,
    a ``file_name`` and positive integer ``height``/``width``.
    """
    source = source or "COCO annotations"
    contiguous = {cat_id: index for index, cat_id in class_id_map(coco).items()}
    counts, firsts = {}, {}

    def found(kind, image_id, ann=None, detail=""):
        counts[kind] = counts.get(kind, 0) + 1
        if kind not in firsts:
            firsts[kind] = f"image {image_id!r}" + (f", annotation {ann['id']!r}" if ann else "") + detail

    listed = set()
    for entry in coco.dataset["images"]:
        _check_image_entry(entry, source)
        if entry["id"] in listed:
            found("duplicate_image_id", entry["id"])
        listed.add(entry["id"])
    anns = coco.dataset["annotations"]
    infos = [coco.imgs.get(ann["image_id"]) for ann in anns]
    boxes, has_area = _boxes_and_areas(anns, infos)
    kept = {}
    for ann, info, box_ok, area in zip(anns, infos, np.isfinite(boxes).all(axis=1).tolist(), has_area.tolist()):
        image_id, category = ann["image_id"], ann["category_id"]
        if info is None:
            found("unknown_image_id", image_id, ann)
            continue
        label = _class_id(contiguous, category)
        if num_classes is not None and label >= num_classes:
            raise ValueError(
                f"{source}: annotation {ann['id']!r} of image {image_id!r} has category_id {category!r}, class id "
                f"{label} in class_id_map, but num_classes={num_classes} allows class ids 0..{num_classes - 1}."
            )
        if not box_ok:
            found("malformed_bbox", image_id, ann, f" (bbox {ann.get('bbox')!r:.60})")
        elif label == PADDING_LABEL:
            found("unknown_category", image_id, ann, f" (category_id {category!r})")
        elif ann.get("iscrowd", 0):
            continue
        elif not area:
            found("empty_box", image_id, ann, f" (bbox {ann.get('bbox')!r})")
        else:
            kept[image_id] = kept.get(image_id, 0) + 1
            if max_instances is not None and kept[image_id] > max_instances:
                found("beyond_max_instances", image_id, ann)
            elif with_masks and not _usable_segmentation(ann.get("segmentation"), info["height"], info["width"]):
                found("unusable_segmentation", image_id, ann)
    if counts:
        parts = [
            f"{counts[kind]} {PROBLEM_KINDS[kind].format(max_instances=max_instances)}, first: {firsts[kind]}"
            for kind in PROBLEM_KINDS if kind in counts
        ]
        message = f"{source}: " + "; ".join(parts) + "."
        if strict:
            raise ValueError(message + " (strict=True)")
        warnings.warn(DataWarning(message + " Pass strict=True to make this an error.", counts), stacklevel=stacklevel)
    return counts


def _check_image_entry(entry, source):
    sizes_ok = all(
        isinstance(entry.get(key), numbers.Integral) and not isinstance(entry.get(key), bool) and entry[key] > 0
        for key in ("height", "width")
    )
    id_ok = isinstance(entry.get("id"), numbers.Integral) and not isinstance(entry.get("id"), bool)
    if not (id_ok and sizes_ok and isinstance(entry.get("file_name"), str) and entry["file_name"]):
        raise ValueError(
            f"{source}: image {entry.get('id')!r} needs an integer 'id', a 'file_name' and positive integer "
            "'height' and 'width', "
            f"got {entry!r:.200}."
        )


def _class_id(contiguous, category_id):
    """The contiguous class id of ``category_id``, ``PADDING_LABEL`` when it is not a category."""
    try:
        return contiguous.get(category_id, PADDING_LABEL)
    except TypeError:  # unhashable
        return PADDING_LABEL


_JSON_NUMBERS = {int, float}


def _finite_numbers(values):
    """Whether ``values`` are all finite real numbers (not bools, not strings)."""
    if set(map(type, values)) <= _JSON_NUMBERS:  # the usual json case, fast
        try:
            return math.isfinite(sum(values))
        except OverflowError:  # a huge int
            return False
    return all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _boxes_and_areas(anns, infos):
    """float32 ``xyxy`` boxes ``[n, 4]`` of ``anns`` as the pipeline builds them (NaN rows for
    malformed bboxes), and whether each keeps an area once clipped to its image (``infos``:
    the image entries, ``None`` for unknown images), as ``prepare_example`` computes it."""
    with np.errstate(over="ignore"):
        boxes = np.array([_xywh_to_xyxy(a.get("bbox")) for a in anns], np.float32).reshape(-1, 4)
    limits = np.array([[i["width"], i["height"]] if i else [0, 0] for i in infos], np.float32).reshape(-1, 2)
    limits = np.tile(limits, 2)
    clipped = np.minimum(np.maximum(boxes, 0.0), limits)
    return boxes, (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])


def _usable_segmentation(segmentation, height, width):
    """Whether ``segmentation`` can give the annotation's mask (the module docstring's rule)."""
    if isinstance(segmentation, dict):
        counts, size = segmentation.get("counts"), segmentation.get("size")
        if not isinstance(size, (list, tuple)) or list(size) != [height, width]:
            return False
        if isinstance(counts, bytes):
            counts = counts.decode("latin-1")
        if isinstance(counts, str):
            counts = _rle_string_counts(counts)
        return (
            isinstance(counts, list)
            and all(isinstance(c, numbers.Integral) and not isinstance(c, bool) and c >= 0 for c in counts)
            and sum(counts) == height * width
        )
    return (
        isinstance(segmentation, list)
        and len(segmentation) > 0
        and all(
            isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0 and _finite_numbers(polygon)
            for polygon in segmentation
        )
    )


def _rle_string_counts(string):
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``, in
    Python), ``None`` when it is not one."""
    counts, position = [], 0
    while position < len(string):
        value, shift, more = 0, 0, True
        while more:
            if position == len(string):
                return None
            char = ord(string[position]) - 48
            if not 0 <= char < 64:
                return None
            value |= (char & 0x1F) << shift
            more = char & 0x20
            position, shift = position + 1, shift + 5
            if not more and char & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def check_image_bytes(encoded, name):
    """``(height, width)`` read from the header of the image file bytes ``encoded``; a
    ``ValueError`` that starts with ``name`` unless ``tf.io.decode_image`` can read them: one
    of the ``IMAGE_SIGNATURES`` formats, a JPEG with an end-of-image marker after its last
    scan, a PNG with its ``IEND`` chunk (damage inside the compressed data is not checked)."""
    kind = next(
        (k for k, parts in IMAGE_SIGNATURES.items() if all(encoded[o:o + len(s)] == s for o, s in parts)), None
    )
    if kind is None:
        raise ValueError(f"{name} is not a JPEG, PNG, GIF, BMP or WebP image ({len(encoded)} bytes starting "
                         f"{encoded[:8]!r}).")
    if kind == "JPEG" and not 0 <= encoded.rfind(b"\xff\xda") < encoded.rfind(b"\xff\xd9"):
        raise ValueError(f"{name} is a truncated JPEG: no end-of-image marker after its last scan.")
    if kind == "PNG" and encoded.rfind(_PNG_END) < 0:
        raise ValueError(f"{name} is a truncated PNG: no IEND chunk.")
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            width, height = image.size
    except (OSError, ValueError, SyntaxError) as error:  # UnidentifiedImageError is an OSError
        raise ValueError(f"{name}: cannot read its {kind} header ({error}).") from error
    return height, width


def read_image_file(path, info, source):
    """The bytes of the image file ``path`` of the json image entry ``info``, checked with
    ``check_image_bytes``; a ``ValueError`` naming the file and the image id when it cannot be
    read or decoded, or when its size is not the entry's ``height``/``width`` (named with both)."""
    name = f"Image file {path!r} (image id {info['id']!r})"
    try:
        with open(path, "rb") as f:
            encoded = f.read()
    except OSError as error:
        raise ValueError(f"{name} cannot be read: {error}") from error
    height, width = check_image_bytes(encoded, name)
    if (height, width) != (info["height"], info["width"]):
        raise ValueError(
            f"{name} is {width}x{height} (width x height) but {source} says {info['width']}x{info['height']}."
        )
    return encoded


def example_arrays(coco, image_id, image_dir, contiguous, with_masks, source):
    """``(encoded, image_id, boxes, labels, crowd[, masks])`` NumPy values of one image of a
    loaded json: the file bytes (``read_image_file``), ``xyxy`` float32 boxes ``[n, 4]`` (NaN
    rows for malformed bboxes), int32 contiguous labels ``[n]`` (``PADDING_LABEL`` for unknown
    categories), bool ``crowd`` ``[n]`` and, ``with_masks``, uint8 masks ``[n, height, width]``."""
    info = coco.imgs[image_id]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    boxes = np.array([_xywh_to_xyxy(a.get("bbox")) for a in anns], np.float32).reshape(-1, 4)
    labels = np.array([_class_id(contiguous, a.get("category_id")) for a in anns], np.int32)
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
    encoded = read_image_file(os.path.join(image_dir, info["file_name"]), info, source)
    out = [encoded, np.int64(image_id), boxes, labels, crowd]
    if with_masks:
        h, w = info["height"], info["width"]
        masks = [_ann_mask(coco, a, h, w) for a in anns]
        out.append(np.stack(masks).astype(np.uint8) if masks else np.zeros((0, h, w), np.uint8))
    return tuple(out)


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
    num_classes=None,
    strict=False,
    repeat_factor_threshold=None,
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
        seed: seed of the shuffle and the flips (and, plus one, of the repeat-factor draws).
        drop_remainder: defaults to ``training``.
        num_classes: when given, a ``ValueError`` at construction for an annotation whose
            class id is ``>= num_classes``.
        strict: the json's problems (module docstring) raise a ``ValueError`` at construction
            instead of one ``DataWarning``.
        repeat_factor_threshold: ``None``, or LVIS repeat-factor sampling's threshold t in
            (0, 1] ("LVIS: A Dataset for Large Vocabulary Instance Segmentation", arXiv
            1908.03195, §5; ``keras_cvx.data.sampling.repeat_factors``, LVIS uses 0.001):
            each image is seen r(I) times per epoch (stochastically rounded, drawn anew each
            epoch), before the shuffle, so that its repeats are shuffled too (a
            ``shuffle_buffer`` above the largest r(I) spreads them). Only with
            ``training=True`` (evaluation sees each image once). Class frequencies, such as
            Equalization Loss's ``class_frequencies(annotation_file)``, must still come from
            the json's annotations, not from the repeated stream. Every annotation's
            ``category_id`` must then be in ``categories`` (``class_frequencies`` raises a
            ``ValueError`` otherwise).
    """
    if repeat_factor_threshold is not None:
        _check_threshold("repeat_factor_threshold", repeat_factor_threshold)
        if not training:
            raise ValueError(
                f"`repeat_factor_threshold` ({repeat_factor_threshold!r}) needs training=True: evaluation must see "
                "each image once."
            )
    coco = load_coco(annotation_file)
    require_positive_int("max_instances", max_instances)
    require_positive_int("batch_size", batch_size)
    if num_classes is not None:
        require_positive_int("num_classes", num_classes)
    _check_mask_stride(mask_stride, image_size)
    with_masks = mask_stride is not None
    source = repr(str(annotation_file))
    check_annotations(coco, max_instances, with_masks, num_classes, strict, source, stacklevel=3)
    contiguous = {cat_id: index for index, cat_id in class_id_map(coco).items()}
    image_ids = sorted(coco.getImgIds())

    def generate(index):
        return example_arrays(coco, image_ids[int(index)], image_dir, contiguous, with_masks, source)

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
    if repeat_factor_threshold is not None:
        stats = repeat_factors(annotation_file, repeat_factor_threshold)
        factor_of = dict(zip(stats["image_ids"].tolist(), stats["factors"].tolist()))
        factors = tf.constant([factor_of[image_id] for image_id in image_ids], tf.float64)
        dataset = apply_repeat_factors(
            dataset, lambda index: tf.gather(factors, index), seed=None if seed is None else seed + 1
        )
    if training:
        dataset = dataset.shuffle(max(1, shuffle_buffer), seed=seed, reshuffle_each_iteration=True).repeat()
    flips = tf.data.Dataset.random(seed=seed).map(lambda r: tf.logical_and(training, r % 2 == 0))
    dataset = tf.data.Dataset.zip((dataset, flips))
    dataset = dataset.map(to_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    drop = training if drop_remainder is None else drop_remainder
    return dataset.batch(batch_size, drop_remainder=drop).prefetch(tf.data.AUTOTUNE)


def kept_objects(boxes, labels, crowd, height, width):
    """``(clipped, finite, keep)`` of ``prepare_example``'s clean-up: the boxes clipped to the
    image (non-finite rows zeroed), which rows are finite, and which are kept (finite, not
    crowd, a known label, an area once clipped)."""
    finite = tf.reduce_all(tf.math.is_finite(boxes), axis=-1)
    clipped = clip_boxes(tf.where(finite[:, None], boxes, tf.zeros_like(boxes)), (height, width))
    keep = (
        finite
        & tf.logical_not(crowd)
        & (labels != PADDING_LABEL)
        & (clipped[:, 2] > clipped[:, 0])
        & (clipped[:, 3] > clipped[:, 1])
    )
    return clipped, finite, keep


def prepare_example(image, image_id, boxes, labels, crowd, masks, flip, image_size, max_instances, mask_stride):
    """Turns one decoded example into ``(image, targets)`` of the contract (unbatched).

    Args:
        image: uint8 ``[h, w, 3]``; ``boxes``: float32 ``[n, 4]`` ``xyxy`` original pixels;
        labels: int32 ``[n]`` contiguous ids (``PADDING_LABEL`` = unknown, dropped); crowd: bool ``[n]``;
        masks: uint8 ``[n, h, w]`` or ``None``; flip: bool scalar tensor.
    """
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    boxes, _, keep = kept_objects(boxes, labels, crowd, height, width)
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
        "labels": tf.ensure_shape(tf.pad(labels, [[0, pad]], constant_values=PADDING_LABEL), [max_instances]),
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
    """COCO ``[x, y, w, h]`` -> ``[x1, y1, x2, y2]``; a missing or malformed bbox (not 4 finite
    numbers) becomes NaN (dropped downstream)."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not _finite_numbers(bbox):
        return [np.nan] * 4
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def _ann_mask(coco, ann, height, width):
    """The annotation's mask at the image size, zeros when its segmentation is not usable
    (``_usable_segmentation``) or pycocotools cannot decode it."""
    if not _usable_segmentation(ann.get("segmentation"), height, width):
        return np.zeros((height, width), np.uint8)
    try:
        mask = coco.annToMask(ann)
    except (TypeError, ValueError, IndexError, KeyError):
        return np.zeros((height, width), np.uint8)
    if mask.shape != (height, width):
        return np.zeros((height, width), np.uint8)
    return mask.astype(np.uint8)
