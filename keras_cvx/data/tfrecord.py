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
``keras_cvx.data.coco.coco_dataset`` (same handling of crowd, empty and out-of-image boxes).
"""

import io
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_cvx.data.coco import _ann_mask, _check_mask_stride, load_coco, prepare_example
from keras_cvx.validation import require_positive_int


def write_coco_tfrecord(annotation_file, image_dir, output_prefix, num_shards=1, include_masks=False):
    """Converts a COCO json to ``num_shards`` TFRecord files ``{output_prefix}-0000i-of-0000n``.

    Returns the list of written paths."""
    require_positive_int("num_shards", num_shards)
    coco = load_coco(annotation_file)
    paths = [f"{output_prefix}-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)]
    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    try:
        for index, image_id in enumerate(sorted(coco.getImgIds())):
            example = _example(coco, image_id, image_dir, include_masks)
            writers[index % num_shards].write(example.SerializeToString())
    finally:
        for writer in writers:
            writer.close()
    return paths


def _example(coco, image_id, image_dir, include_masks):
    info = coco.imgs[image_id]
    height, width = int(info["height"]), int(info["width"])
    with open(os.path.join(image_dir, info["file_name"]), "rb") as f:
        encoded = f.read()
    anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])) if len(a.get("bbox", ())) == 4]
    names = {c["id"]: c.get("name", "") for c in coco.loadCats(coco.getCatIds())}
    x, y, w, h = (np.array([float(a["bbox"][k]) for a in anns], np.float32) for k in range(4))
    feature = {
        "image/encoded": _bytes([encoded]),
        "image/format": _bytes([os.path.splitext(info["file_name"])[1].lstrip(".").lower().encode()]),
        "image/height": _ints([height]),
        "image/width": _ints([width]),
        "image/filename": _bytes([info["file_name"].encode()]),
        "image/source_id": _bytes([str(image_id).encode()]),
        "image/object/bbox/xmin": _floats(x / width),
        "image/object/bbox/ymin": _floats(y / height),
        "image/object/bbox/xmax": _floats((x + w) / width),
        "image/object/bbox/ymax": _floats((y + h) / height),
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
):
    """``(images, targets)`` batches from Model Garden-style COCO TFRecords.

    Args:
        file_pattern: glob of TFRecord files (or a list of paths).
        class_id_map: ``{contiguous_id: category_id}`` (e.g. ``coco.class_id_map(json)``);
            objects of other categories are dropped.
        image_size, max_instances, batch_size, training, mask_stride, shuffle_buffer, seed,
        drop_remainder: as ``keras_cvx.data.coco.coco_dataset``.
    """
    require_positive_int("max_instances", max_instances)
    require_positive_int("batch_size", batch_size)
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
        default_value=-1,
    )
    with_masks = mask_stride is not None
    features = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/source_id": tf.io.FixedLenFeature([], tf.string, default_value="0"),
        "image/object/class/label": tf.io.VarLenFeature(tf.int64),
        "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
    }
    for key in ("xmin", "ymin", "xmax", "ymax"):
        features[f"image/object/bbox/{key}"] = tf.io.VarLenFeature(tf.float32)
    if with_masks:
        features["image/object/mask"] = tf.io.VarLenFeature(tf.string)

    def parse(serialized, flip):
        parsed = tf.io.parse_single_example(serialized, features)
        dense = {k: tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v for k, v in parsed.items()}
        image = tf.io.decode_image(dense["image/encoded"], channels=3, expand_animations=False)
        height = tf.cast(tf.shape(image)[0], tf.float32)
        width = tf.cast(tf.shape(image)[1], tf.float32)
        boxes = tf.stack(
            [
                dense["image/object/bbox/xmin"] * width,
                dense["image/object/bbox/ymin"] * height,
                dense["image/object/bbox/xmax"] * width,
                dense["image/object/bbox/ymax"] * height,
            ],
            axis=-1,
        )
        labels = table.lookup(dense["image/object/class/label"])
        num = tf.shape(labels)[0]
        crowd = tf.cast(dense["image/object/is_crowd"], tf.bool)
        crowd = tf.pad(crowd, [[0, num - tf.shape(crowd)[0]]])  # is_crowd may be absent
        masks = None
        if with_masks:
            strings = dense["image/object/mask"]
            masks = tf.cond(
                tf.size(strings) > 0,
                lambda: tf.map_fn(
                    lambda s: tf.io.decode_png(s, channels=1)[..., 0],
                    strings,
                    fn_output_signature=tf.TensorSpec([None, None], tf.uint8),
                ),
                lambda: tf.zeros([0, tf.shape(image)[0], tf.shape(image)[1]], tf.uint8),
            )
            masks = tf.reshape(masks, [num, tf.shape(image)[0], tf.shape(image)[1]])
        image_id = tf.strings.to_number(dense["image/source_id"], tf.int64)
        return prepare_example(image, image_id, boxes, labels, crowd, masks, flip, image_size, max_instances, mask_stride)

    dataset = tf.data.TFRecordDataset(files)
    if training:
        dataset = dataset.shuffle(max(1, shuffle_buffer), seed=seed, reshuffle_each_iteration=True).repeat()
    flips = tf.data.Dataset.random(seed=seed).map(lambda r: tf.logical_and(training, r % 2 == 0))
    dataset = tf.data.Dataset.zip((dataset, flips))
    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    drop = training if drop_remainder is None else drop_remainder
    return dataset.batch(batch_size, drop_remainder=drop).prefetch(tf.data.AUTOTUNE)
