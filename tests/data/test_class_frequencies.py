import json

import numpy as np
import pytest

from keras_cvx.data.class_frequencies import class_frequencies
from keras_cvx.losses.equalization import tail_class_mask


def _write(tmp_path, annotations, categories=(3, 1, 7), images=6):
    path = tmp_path / "ann.json"
    data = {
        "images": [{"id": i, "width": 10, "height": 10, "file_name": f"{i}.png"} for i in range(images)],
        "categories": [{"id": c, "name": str(c)} for c in categories],
        "annotations": [{"id": k, "image_id": i, "category_id": c, "bbox": [0, 0, 1, 1]} for k, (i, c) in enumerate(annotations)],
    }
    path.write_text(json.dumps(data))
    return str(path)


def test_image_level_counts_and_denominator(tmp_path):
    # image 0 has class 1 three times (counts once); images 4, 5 have no annotations
    path = _write(tmp_path, [(0, 1), (0, 1), (0, 1), (1, 1), (1, 3), (2, 3), (3, 1)])
    stats = class_frequencies(path, rare_max_images=1, common_max_images=2)
    np.testing.assert_array_equal(stats["category_ids"], [1, 3, 7])
    np.testing.assert_array_equal(stats["image_counts"], [3, 2, 0])
    assert stats["num_images"] == 4
    np.testing.assert_allclose(stats["frequencies"], [3 / 4, 2 / 4, 0.0])
    assert list(stats["groups"]) == ["f", "c", "r"]


def test_default_lvis_thresholds(tmp_path):
    annotations = [(i, 1) for i in range(11)] + [(i, 3) for i in range(10)] + [(i, 7) for i in range(101)]
    stats = class_frequencies(_write(tmp_path, annotations, images=101))
    assert list(stats["groups"]) == ["c", "r", "f"]
    np.testing.assert_array_equal(tail_class_mask(stats["frequencies"], 0.5), [1, 1, 0])


def test_synthetic_long_tailed_dataset_matches_its_image_counts(tmp_path):
    from keras_cvx.data.shapes import synthetic_shapes

    path = synthetic_shapes(str(tmp_path / "shapes"), num_images=12, image_size=(48, 48), num_classes=4, long_tailed=True)
    data = json.load(open(path))
    stats = class_frequencies(path)
    expected = {c["id"]: c["image_count"] for c in data["categories"]}
    np.testing.assert_array_equal(stats["image_counts"], [expected[c] for c in stats["category_ids"]])


def test_errors_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="common_max_images"):
        class_frequencies(_write(tmp_path, []), rare_max_images=5, common_max_images=2)
    with pytest.raises(ValueError, match="coco_annotation_file"):
        class_frequencies(_write(tmp_path, [(0, 99)]))
