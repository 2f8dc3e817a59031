"""TFRecord input in the ``tf.train.Example`` format of TF Model Garden's COCO converter
(``official/vision/data/create_coco_tf_record.py``), read without importing it, and a writer
that converts a COCO json (+ image folder) to such files.

Keys: ``image/encoded`` (the image file bytes), ``image/format``, ``image/height``,
``image/width``, ``image/filename``, ``image/source_id`` (the image id as a string),
``image/object/bbox/{xmin,ymin,xmax,ymax}`` (normalised to 0..1),
``image/object/class/label`` (the COCO category id, as Model Garden writes it),
``image/object/class/text``, ``image/object/is_crowd``, ``image/object/area`` and, with
masks, ``image/object/mask`` (one PNG string per object).

``tfrecord_dataset`` yields the same ``(images, targets)`` contract as
``keras_cvx.data.coco.coco_dataset``, with the same clean-up (crowd objects excluded;
objects of categories outside ``class_id_map``, with non-finite boxes or boxes empty once
clipped dropped; the first ``max_instances`` kept).

Bad data:

- ``write_coco_tfrecord`` checks the json as ``coco_dataset`` does (``coco.check_annotations``
  without ``max_instances``: one ``DataWarning`` with the counts, or a ``ValueError`` with
  ``strict=True``) and each image file as ``coco_dataset`` does (``coco.read_image_file``: a
  ``ValueError`` naming the file for an unreadable, undecodable or truncated file, or a
  size other than the json's). It writes one record per distinct image id (duplicates: the
  last entry), no record for annotations of unknown images, no object for a malformed bbox
  or an unknown category, and an all-zero mask for an unusable segmentation; crowd objects
  (with ``is_crowd``) and empty boxes are written (the reader drops them).
- ``tfrecord_dataset`` cannot count problems without reading every record, so it does not
  warn; with ``strict=True`` a record holding an object that would be dropped (category
  outside ``class_id_map``, non-finite box, non-crowd box empty once clipped) or more than
  ``max_instances`` kept objects stops the iteration. With ``num_classes``, a record holding
  a class id ``>= num_classes`` stops it. Each such error, and each of these, is a
  ``tf.errors.InvalidArgumentError`` whose message names the record ("record i of <file>
  (image/source_id=…, image/filename=…)"): no or empty ``image/encoded``; bytes that
  are not a JPEG, PNG, GIF, BMP or WebP image; ``image/height``/``image/width`` (when
  present, i.e. non-zero) other than the decoded size; per-object lists (bbox coordinates,
  class labels, ``is_crowd`` when present, masks) of different lengths; a mask that is not a
  PNG or not of the image's size; an ``image/source_id`` that is not an integer (a missing
  one reads as 0). Not named: damage inside compressed image data whose format signature is
  right (``tf.io.decode_image``'s error) and a feature stored with the wrong type
  (``tf.io.parse_single_example``'s error names the key only).
"""

import io
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_cvx.data.coco import (
    IMAGE_SIGNATURES,
    _ann_mask,
    _check_mask_stride,
    _class_id,
    _xywh_to_xyxy,
    check_annotations,
    class_id_map as json_class_id_map,
    kept_objects,
    load_coco,
    prepare_example,
    read_image_file,
)
from keras_cvx.validation import PADDING_LABEL, require_positive_int


def write_coco_tfrecord(annotation_file, image_dir, output_prefix, num_shards=1, include_masks=False, strict=False):
    """Converts a COCO json to ``num_shards`` TFRecord files ``{output_prefix}-0000i-of-0000n``.

    ``strict``: the json's problems raise a ``ValueError`` before anything is written,
    instead of one ``DataWarning`` (see the module docstring). Returns the list of written paths."""
    require_positive_int("num_shards", num_shards)
    coco = load_coco(annotation_file)
    source = repr(str(annotation_file))
    check_annotations(coco, None, include_masks, None, strict, source, stacklevel=3)
    paths = [f"{output_prefix}-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)]
    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    try:
        for index, image_id in enumerate(sorted(coco.getImgIds())):
            example = _example(coco, image_id, image_dir, include_masks, source)
            writers[index % num_shards].write(example.SerializeToString())
    finally:
        for writer in writers:
            writer.close()
    return paths


def _example(coco, image_id, image_dir, include_masks, source):
    info = coco.imgs[image_id]
    height, width = info["height"], info["width"]
    encoded = read_image_file(os.path.join(image_dir, info["file_name"]), info, source)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    names = {c["id"]: c.get("name", "") for c in coco.loadCats(coco.getCatIds())}
    boxes = np.array([_xywh_to_xyxy(a.get("bbox")) for a in anns], np.float32).reshape(-1, 4)
    contiguous = {cat_id: index for index, cat_id in json_class_id_map(coco).items()}
    known = np.array([_class_id(contiguous, a["category_id"]) != PADDING_LABEL for a in anns], bool)
    written = np.isfinite(boxes).all(axis=1) & known.reshape(-1)
    anns, boxes = [a for a, ok in zip(anns, written) if ok], boxes[written]
    feature = {
        "image/encoded": _bytes([encoded]),
        "image/format": _bytes([os.path.splitext(info["file_name"])[1].lstrip(".").lower().encode()]),
        "image/height": _ints([height]),
        "image/width": _ints([width]),
        "image/filename": _bytes([info["file_name"].encode()]),
        "image/source_id": _bytes([str(image_id).encode()]),
        "image/object/bbox/xmin": _floats(boxes[:, 0] / width),
        "image/object/bbox/ymin": _floats(boxes[:, 1] / height),
        "image/object/bbox/xmax": _floats(boxes[:, 2] / width),
        "image/object/bbox/ymax": _floats(boxes[:, 3] / height),
        "image/object/class/label": _ints([int(a["category_id"]) for a in anns]),
        "image/object/class/text": _bytes([names.get(a["category_id"], "").encode() for a in anns]),
        "image/object/is_crowd": _ints([int(a.get("iscrowd", 0)) for a in anns]),
        "image/object/area": _floats([float(a.get("area", 0.0)) for a in anns]),
    }
    if include_masks:
        feature["image/object/mask"] = _bytes([_png(_ann_mask(coco, a, height, width)) for a in anns])
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _png(mask):
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def tfrecord_dataset(
    file_pattern,
    class_id_map,
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
):
    """``(images, targets)`` batches from Model Garden-style COCO TFRecords.

    Args:
        file_pattern: glob of TFRecord files (or a list of paths).
        class_id_map: ``{contiguous_id: category_id}`` (e.g. ``coco.class_id_map(json)``);
            objects of other categories are dropped.
        image_size, max_instances, batch_size, training, mask_stride, shuffle_buffer, seed,
        drop_remainder: as ``keras_cvx.data.coco.coco_dataset``.
        num_classes: when given, a record with a class id ``>= num_classes`` stops the
            iteration with an error naming the record.
        strict: a record with an object that would be dropped, or with more than
            ``max_instances`` objects, stops the iteration with an error naming the record.
    """
    require_positive_int("max_instances", max_instances)
    require_positive_int("batch_size", batch_size)
    if num_classes is not None:
        require_positive_int("num_classes", num_classes)
    _check_mask_stride(mask_stride, image_size)
    if not class_id_map:
        raise ValueError(f"`class_id_map` must map contiguous ids to category ids, got {class_id_map!r}.")
    files = tf.io.gfile.glob(file_pattern) if isinstance(file_pattern, str) else list(file_pattern)
    if not files:
        raise ValueError(f"`file_pattern` matches no file: {file_pattern!r}.")
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant([int(v) for v in class_id_map.values()], tf.int64),
            tf.constant([int(k) for k in class_id_map], tf.int32),
        ),
        default_value=PADDING_LABEL,
    )
    with_masks = mask_stride is not None
    features = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "image/source_id": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "image/height": tf.io.FixedLenFeature([], tf.int64, default_value=0),
        "image/width": tf.io.FixedLenFeature([], tf.int64, default_value=0),
        "image/object/class/label": tf.io.VarLenFeature(tf.int64),
        "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
    }
    for key in ("xmin", "ymin", "xmax", "ymax"):
        features[f"image/object/bbox/{key}"] = tf.io.VarLenFeature(tf.float32)
    if with_masks:
        features["image/object/mask"] = tf.io.VarLenFeature(tf.string)

    def parse(path, index, serialized, flip):
        parsed = tf.io.parse_single_example(serialized, features)
        dense = {k: tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v for k, v in parsed.items()}
        name = tf.strings.join([
            "record ", tf.strings.as_string(index), " of ", path, " (image/source_id=", dense["image/source_id"],
            ", image/filename=", dense["image/filename"], ")",
        ])
        encoded = dense["image/encoded"]
        with tf.control_dependencies([_check(_is_image(encoded), name, "has no image/encoded or one that is not a "
                                             "JPEG, PNG, GIF, BMP or WebP image; its length is",
                                             tf.strings.length(encoded))]):
            image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        size = tf.shape(image)[:2]
        stated = tf.cast(tf.stack([dense["image/height"], dense["image/width"]]), tf.int32)
        raw_labels = dense["image/object/class/label"]
        num = tf.shape(raw_labels)[0]
        lengths = [tf.shape(dense[f"image/object/bbox/{k}"])[0] for k in ("xmin", "ymin", "xmax", "ymax")]
        crowd_length = tf.shape(dense["image/object/is_crowd"])[0]
        checks = [
            _check(tf.reduce_all((stated == 0) | (stated == size)), name, "has image/height, image/width", stated,
                   "but its image decodes to", size),
            _check(tf.reduce_all(tf.stack(lengths) == num) & ((crowd_length == 0) | (crowd_length == num)), name,
                   "has per-object lists of different lengths: bbox xmin, ymin, xmax, ymax", tf.stack(lengths),
                   "class/label", num, "is_crowd", crowd_length),
            _check(tf.strings.regex_full_match(dense["image/source_id"], "|-?[0-9]+"), name,
                   "has an image/source_id that is not an integer"),
        ]
        with tf.control_dependencies(checks):
            height = tf.cast(size[0], tf.float32)
            width = tf.cast(size[1], tf.float32)
            boxes = tf.stack(
                [
                    dense["image/object/bbox/xmin"] * width,
                    dense["image/object/bbox/ymin"] * height,
                    dense["image/object/bbox/xmax"] * width,
                    dense["image/object/bbox/ymax"] * height,
                ],
                axis=-1,
            )
            labels = table.lookup(raw_labels)
            crowd = tf.cast(dense["image/object/is_crowd"], tf.bool)
            crowd = tf.pad(crowd, [[0, num - tf.shape(crowd)[0]]])  # is_crowd may be absent
            image_id = tf.strings.to_number(
                tf.where(dense["image/source_id"] == "", "0", dense["image/source_id"]), tf.int64
            )
        checks = []
        if num_classes is not None:
            checks.append(_check(tf.reduce_all(labels < num_classes), name, "has category ids",
                                 tf.cast(raw_labels, tf.int32),
                                 "with class ids", labels, f"not all < num_classes={num_classes}"))
        if strict:
            checks.append(_strict_check(boxes, labels, crowd, size, max_instances, name))
        masks = None
        if with_masks:
            masks = _decode_masks(dense["image/object/mask"], num, size, name)
        with tf.control_dependencies(checks):
            image = tf.identity(image)
        return prepare_example(image, image_id, boxes, labels, crowd, masks, flip, image_size, max_instances, mask_stride)

    dataset = tf.data.Dataset.from_tensor_slices(files).flat_map(
        lambda path: tf.data.TFRecordDataset(path).enumerate().map(lambda i, record: (path, i, record))
    )
    if training:
        dataset = dataset.shuffle(max(1, shuffle_buffer), seed=seed, reshuffle_each_iteration=True).repeat()
    flips = tf.data.Dataset.random(seed=seed).map(lambda r: tf.logical_and(training, r % 2 == 0))
    dataset = tf.data.Dataset.zip((dataset, flips))
    dataset = dataset.map(
        lambda record, flip: parse(*record, flip), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    drop = training if drop_remainder is None else drop_remainder
    return dataset.batch(batch_size, drop_remainder=drop).prefetch(tf.data.AUTOTUNE)


def _check(condition, name, *message):
    """A ``tf.debugging.Assert`` whose message starts with the record's ``name``. The message
    holds only strings and int32 tensors: with other dtypes ``Assert`` adds a ``tf.cond``,
    which costs time on every record."""
    return tf.debugging.Assert(condition, [name, *message], summarize=32)


_SIGNATURE_PARTS = [(group, offset, part) for group, parts in enumerate(IMAGE_SIGNATURES.values())
                    for offset, part in parts]


def _is_image(encoded):
    """Whether the bytes start with one of ``coco.IMAGE_SIGNATURES`` (the graph twin of the
    signature test in ``coco.check_image_bytes``), in a few vectorised ops."""
    groups, offsets, parts = zip(*_SIGNATURE_PARTS)
    head = tf.fill([len(parts)], tf.strings.join([encoded, "\0" * 16]))
    matches = tf.cast(tf.equal(tf.strings.substr(head, offsets, [len(p) for p in parts]), parts), tf.int32)
    return tf.reduce_any(tf.math.unsorted_segment_min(matches, groups, len(IMAGE_SIGNATURES)) > 0)


def _strict_check(boxes, labels, crowd, size, max_instances, name):
    """``strict``: the counts of ``coco.check_annotations``'s kinds in one record must be 0."""
    _, finite, keep = kept_objects(boxes, labels, crowd, size[0], size[1])
    known = finite & (labels != PADDING_LABEL)
    counts = [
        tf.reduce_sum(tf.cast(tf.logical_not(finite), tf.int32)),
        tf.reduce_sum(tf.cast(finite & (labels == PADDING_LABEL), tf.int32)),
        tf.reduce_sum(tf.cast(known & tf.logical_not(crowd) & tf.logical_not(keep), tf.int32)),
        tf.maximum(tf.reduce_sum(tf.cast(keep, tf.int32)) - max_instances, 0),
    ]
    return _check(
        tf.equal(tf.add_n(counts), 0), name, "(strict=True) has objects that would be dropped: non-finite box",
        counts[0], "category outside class_id_map", counts[1], "box empty once clipped", counts[2],
        f"beyond max_instances={max_instances}", counts[3],
    )


def _decode_masks(strings, num, size, name):
    """uint8 ``[num, height, width]`` masks from one PNG string per object, after one check of
    their number, PNG signatures and header sizes (IHDR: width, height as big-endian uint32)."""
    padded = tf.strings.join([strings, "\0" * 24])
    is_png = tf.equal(tf.strings.substr(padded, 0, 8), IMAGE_SIGNATURES["PNG"][0][1])
    header = tf.reshape(tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 16, 8), tf.uint8), tf.int64), [-1, 2, 4])
    sizes = tf.cast(tf.reverse(tf.reduce_sum(header * [2**24, 2**16, 2**8, 1], axis=-1), axis=[1]), tf.int32)
    ok = tf.equal(tf.size(strings), num) & tf.reduce_all(is_png) & tf.reduce_all(sizes == size)
    check = _check(ok, name, "has image/object/mask for", tf.size(strings), "of", num, "objects; all PNG:",
                   tf.cast(tf.reduce_all(is_png), tf.int32), "; mask sizes (height, width):", sizes,
                   "for an image of size", size)
    with tf.control_dependencies([check]):
        masks = tf.cond(
            tf.size(strings) > 0,
            lambda: tf.map_fn(
                lambda s: tf.io.decode_png(s, channels=1)[..., 0],
                strings,
                fn_output_signature=tf.TensorSpec([None, None], tf.uint8),
            ),
            lambda: tf.zeros([0, size[0], size[1]], tf.uint8),
        )
    return tf.reshape(masks, [num, size[0], size[1]])
