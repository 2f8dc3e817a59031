"""Tests for keras_cvx.data.tfrecord: Model Garden keys, and the same targets as the json pipeline."""

import numpy as np
import pytest
import tensorflow as tf

from keras_cvx.data.coco import class_id_map, coco_dataset
from keras_cvx.data.shapes import synthetic_shapes
from keras_cvx.data.tfrecord import tfrecord_dataset, write_coco_tfrecord


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
