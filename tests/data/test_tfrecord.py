"""Tests for keras_cvx.data.tfrecord: Model Garden keys, and the same targets as the json pipeline."""

import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_cvx.data.coco import DataWarning, class_id_map, coco_dataset
from keras_cvx.data.shapes import synthetic_shapes
from keras_cvx.data.tfrecord import _bytes, _floats, _ints, tfrecord_dataset, write_coco_tfrecord


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    path = synthetic_shapes(str(out), num_images=5, image_size=(40, 48), num_classes=3, max_objects=4, seed=5)
    files = write_coco_tfrecord(path, str(out / "images"), str(out / "rec" / "coco"), num_shards=1, include_masks=True)
    return path, str(out / "images"), files


def test_model_garden_keys(records):
    path, _, files = records
    assert files[0].endswith("coco-00000-of-00001")
    examples = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files)]
    assert len(examples) == 5
    feature = examples[0].features.feature
    for key in ("image/encoded", "image/height", "image/width", "image/source_id", "image/object/bbox/xmin",
                "image/object/bbox/ymax", "image/object/class/label", "image/object/is_crowd", "image/object/mask"):
        assert key in feature
    assert feature["image/source_id"].bytes_list.value[0] == b"1"
    assert feature["image/height"].int64_list.value[0] == 40
    feature = next(e.features.feature for e in examples if e.features.feature["image/object/mask"].bytes_list.value)
    xmin = np.array(feature["image/object/bbox/xmin"].float_list.value)
    assert ((xmin >= 0) & (xmin <= 1)).all()
    assert feature["image/object/mask"].bytes_list.value[0][:4] == b"\x89PNG"


def test_same_targets_as_the_json_pipeline(records):
    path, image_dir, files = records
    ids = class_id_map(path)
    from_json = list(coco_dataset(path, image_dir, (32, 32), 6, 5, False, mask_stride=4))[0]
    from_records = list(tfrecord_dataset(files, ids, (32, 32), 6, 5, False, mask_stride=4))[0]
    np.testing.assert_allclose(from_records[0].numpy(), from_json[0].numpy(), atol=1e-4)
    np.testing.assert_array_equal(from_records[1]["labels"].numpy(), from_json[1]["labels"].numpy())
    np.testing.assert_allclose(from_records[1]["boxes"].numpy(), from_json[1]["boxes"].numpy(), atol=1e-3)
    np.testing.assert_array_equal(from_records[1]["masks"].numpy(), from_json[1]["masks"].numpy())
    for key in ("image_id", "height", "width", "scale"):
        np.testing.assert_array_equal(from_records[1]["image_info"][key].numpy(), from_json[1]["image_info"][key].numpy())


def test_unknown_categories_dropped_and_bad_arguments(records):
    path, _, files = records
    only_first = {0: class_id_map(path)[0]}
    _, targets = next(iter(tfrecord_dataset(files, only_first, (32, 32), 6, 5, False)))
    assert set(np.unique(targets["labels"].numpy())) <= {0, -1}
    with pytest.raises(ValueError, match="file_pattern"):
        tfrecord_dataset("/nonexistent/*.tfrecord", only_first, (32, 32), 6, 1, False)
    with pytest.raises(ValueError, match="class_id_map"):
        tfrecord_dataset(files, {}, (32, 32), 6, 1, False)


# ---- bad data (issue 16): errors name the record ----

def _png_bytes(height, width, channels=3):
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, channels), 90, np.uint8).squeeze()).save(buffer, format="PNG")
    return buffer.getvalue()


def _record(path, **overrides):
    """A one-record file: a 32x40 PNG with one object of category 3, ``overrides`` replace or
    (``None``) remove features."""
    feature = {
        "image/encoded": _bytes([_png_bytes(32, 40)]),
        "image/source_id": _bytes([b"42"]),
        "image/filename": _bytes([b"cat.png"]),
        "image/height": _ints([32]),
        "image/width": _ints([40]),
        "image/object/bbox/xmin": _floats([0.1]),
        "image/object/bbox/ymin": _floats([0.1]),
        "image/object/bbox/xmax": _floats([0.5]),
        "image/object/bbox/ymax": _floats([0.5]),
        "image/object/class/label": _ints([3]),
        "image/object/mask": _bytes([_png_bytes(32, 40, 1)]),
    }
    feature.update(overrides)
    feature = {k: v for k, v in feature.items() if v is not None}
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return str(path)


BAD_RECORDS = {
    "no_image": ({"image/encoded": None}, "has no image/encoded or one that is not a JPEG"),
    "junk_image": ({"image/encoded": _bytes([b"junk bytes"])}, "has no image/encoded or one that is not a JPEG"),
    "size": ({"image/height": _ints([30])}, r"has image/height, image/width\] \[30 40\] \[but its image decodes to"),
    "lengths": ({"image/object/bbox/xmax": _floats([0.5, 0.6])}, "has per-object lists of different lengths"),
    "mask_count": ({"image/object/mask": _bytes([])}, r"has image/object/mask for\] \[0\] \[of\] \[1\] \[objects"),
    "mask_size": ({"image/object/mask": _bytes([_png_bytes(8, 10, 1)])},
                  r"has image/object/mask for\] \[1\] \[of\] \[1\] \[objects; all PNG:\] \[1\] \[; mask sizes \(height, width\):\] \[\[8 10\]\] \[for an image of size\] \[32 40\]"),
    "mask_not_png": ({"image/object/mask": _bytes([b"xx"])}, r"has image/object/mask for\] \[1\] \[of\] \[1\] \[objects; all PNG:\] \[0\]"),
    "source_id": ({"image/source_id": _bytes([b"abc"])}, "has an image/source_id that is not an integer"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_bad_records_are_named(tmp_path, case):
    overrides, expected = BAD_RECORDS[case]
    path = _record(tmp_path / "bad.tfrecord", **overrides)
    source_id = "abc" if case == "source_id" else "42"
    name = rf"record 0 of {path} \(image/source_id={source_id}, image/filename=cat\.png\)\] \["
    with pytest.raises(tf.errors.InvalidArgumentError, match=name + expected):
        next(iter(tfrecord_dataset(path, {0: 3}, (32, 40), 2, 1, False, mask_stride=4)))


def test_good_record_and_num_classes_check(tmp_path):
    path = _record(tmp_path / "good.tfrecord", **{"image/object/class/label": _ints([7, 3])},
                   **{f"image/object/bbox/{k}": _floats([v, v]) for k, v in
                      (("xmin", 0.1), ("ymin", 0.1), ("xmax", 0.5), ("ymax", 0.5))},
                   **{"image/object/mask": _bytes([_png_bytes(32, 40, 1)] * 2)})
    ids = {0: 3, 1: 7}
    _, targets = next(iter(tfrecord_dataset(path, ids, (32, 40), 2, 1, False, mask_stride=4, num_classes=2)))
    np.testing.assert_array_equal(targets["labels"].numpy(), [[1, 0]])
    np.testing.assert_allclose(targets["boxes"].numpy(), [[[4, 3.2, 20, 16]] * 2], atol=1e-5)
    assert int(targets["image_info"]["image_id"][0]) == 42
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"image/source_id=42, .*\[has category ids\] \[7 3\] \[with class ids\] \[1 0\] "
                             r"\[not all < num_classes=1\]"):
        next(iter(tfrecord_dataset(path, ids, (32, 40), 2, 1, False, num_classes=1)))
    with pytest.raises(ValueError, match="num_classes"):
        tfrecord_dataset(path, ids, (32, 40), 2, 1, False, num_classes=0)


def test_strict_reading_names_the_record(tmp_path):
    # category 7 is outside the map, one box is left of the image, three objects for max_instances=1
    labels = _ints([7, 3, 3, 3])
    boxes = {f"image/object/bbox/{k}": _floats(v) for k, v in
             (("xmin", [0.1, -0.5, 0.1, 0.2]), ("ymin", [0.1] * 4), ("xmax", [0.5, -0.1, 0.5, 0.6]), ("ymax", [0.5] * 4))}
    path = _record(tmp_path / "r.tfrecord", **{"image/object/class/label": labels, "image/object/mask": None}, **boxes)
    _, targets = next(iter(tfrecord_dataset(path, {0: 3}, (32, 40), 1, 1, False)))  # not strict: dropped quietly
    np.testing.assert_array_equal(targets["labels"].numpy(), [[0]])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"source_id=42, .*\(strict=True\) has objects that would be dropped: non-finite box\] "
                             r"\[0\] \[category outside class_id_map\] \[1\] \[box empty once clipped\] \[1\] "
                             r"\[beyond max_instances=1\] \[1\]"):
        next(iter(tfrecord_dataset(path, {0: 3}, (32, 40), 1, 1, False, strict=True)))


def test_writer_reports_the_json_and_checks_files(tmp_path):
    for name, size in (("a.png", (32, 40)), ("b.png", (30, 40))):
        Image.fromarray(np.zeros((*size, 3), np.uint8)).save(tmp_path / name)
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "iscrowd": 0, "area": 100},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, "x", 10], "iscrowd": 0, "area": 100},
        {"id": 3, "image_id": 1, "category_id": 5, "bbox": [0, 0, 10, 10], "iscrowd": 0, "area": 100},
    ]
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 32, "width": 40}],
            "annotations": annotations, "categories": [{"id": 3, "name": "three"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"first: image 1, annotation 2 .*first: image 1, annotation 3 .*strict=True"):
        write_coco_tfrecord(str(path), str(tmp_path), str(tmp_path / "strict" / "rec"), strict=True)
    with pytest.warns(DataWarning) as record:
        files = write_coco_tfrecord(str(path), str(tmp_path), str(tmp_path / "rec" / "rec"))
    assert record[0].message.counts == {"malformed_bbox": 1, "unknown_category": 1}  # not counted: max_instances
    feature = tf.train.Example.FromString(next(iter(tf.data.TFRecordDataset(files))).numpy()).features.feature
    assert list(feature["image/object/class/label"].int64_list.value) == [3]  # anns 2 and 3 are not written
    data["images"][0]["file_name"] = "b.png"
    path.write_text(json.dumps(data))
    with pytest.warns(DataWarning), pytest.raises(ValueError, match=r"b\.png' \(image id 1\) is 40x30 \(width x height\) but .* says 40x32"):
        write_coco_tfrecord(str(path), str(tmp_path), str(tmp_path / "rec2" / "rec"))
