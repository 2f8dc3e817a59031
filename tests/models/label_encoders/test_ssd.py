"""Tests for keras_cvx.models.label_encoders.ssd: the IoU threshold exactly at 0.5, the forced
best anchor, SSD's coding (variances 0.1 / 0.2) by hand, padding and the config. The full
assignment is also compared with a NumPy SSD in tests/models/test_ssd_net.py."""

import numpy as np
import pytest
from keras import ops

from keras_cvx.models.label_encoders.ssd import SSDLabelEncoder

# ground truth [0, 0, 10, 20]; anchors: the box itself (best, IoU 1), IoU exactly 0.5,
# IoU 0.4995 (below the threshold), far away (IoU 0)
ANCHORS = np.array([[0, 0, 10, 20], [0, 0, 10, 10], [0, 0, 10, 9.99], [50, 50, 60, 60]], "float32")


def encode(boxes, labels, anchors=ANCHORS, **kwargs):
    out = SSDLabelEncoder(**kwargs)(np.asarray(boxes, "float32"), np.asarray(labels, "int32"), anchors)
    return {k: np.asarray(ops.convert_to_numpy(v)) for k, v in out.items()}


def test_iou_at_the_threshold_is_positive_and_below_is_negative():
    targets = encode([[[0, 0, 10, 20], [0, 0, 0, 0]]], [[3, -1]])
    np.testing.assert_array_equal(targets["class_targets"], [[4, 4, 0, 0]])  # label + 1; 0 background
    assert SSDLabelEncoder().iou_threshold == 0.5  # SSD's matching threshold
    targets = encode([[[0, 0, 10, 20]]], [[3]], iou_threshold=0.6)
    np.testing.assert_array_equal(targets["class_targets"], [[4, 0, 0, 0]])


def test_best_anchor_is_forced_even_below_the_threshold():
    targets = encode([[[48, 48, 70, 70]]], [[0]])  # IoU with the far anchor 100/484 < 0.5
    np.testing.assert_array_equal(targets["class_targets"], [[0, 0, 0, 1]])


def test_box_targets_are_ssd_coded_by_hand():
    targets = encode([[[0, 0, 10, 20]]], [[1]])
    # anchor 1 (cx 5, cy 5, w 10, h 10) -> box (5, 10, 10, 20): (0, 10·5/10, 5 log 1, 5 log 2)
    np.testing.assert_allclose(targets["box_targets"][0, 1], [0.0, 5.0, 0.0, 5 * np.log(2.0)], atol=1e-5)
    np.testing.assert_array_equal(targets["box_targets"][0, 0], [0, 0, 0, 0])  # exact match
    np.testing.assert_array_equal(targets["box_targets"][0, 2:], 0.0)  # negatives


def test_all_padding_gives_background_and_config_round_trips():
    targets = encode([[[0, 0, 0, 0]]], [[-1]])
    np.testing.assert_array_equal(targets["class_targets"], [[0, 0, 0, 0]])
    encoder = SSDLabelEncoder(iou_threshold=0.45, box_coder_weights=(1, 1, 1, 1))
    assert SSDLabelEncoder.from_config(encoder.get_config()).get_config() == encoder.get_config()
    with pytest.raises(ValueError, match="iou_threshold"):
        SSDLabelEncoder(iou_threshold=1.5)
    with pytest.raises(ValueError, match="box_coder_weights"):
        SSDLabelEncoder(box_coder_weights=(1, 1))
