"""Tests for keras_cvx.models.label_encoders.fcos: FCOS target assignment against a NumPy
transcription of AdelaiDet's ``compute_targets_for_locations`` (sizes of interest, center
sampling radius 1.5 around a given centre, the smallest box for ambiguous locations), values
exactly at the size-of-interest boundaries, center-ness targets, and mask centres of mass."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.models.anchor_generators.fcos import FCOSLocations
from keras_cvx.models.label_encoders.fcos import FCOSLabelEncoder, mask_centers

STRIDES = (8, 16, 32, 64, 128)


def numpy_fcos_targets(boxes, labels, locations, levels, centers=None, radius=1.5,
                       sizes=(64, 128, 256, 512)):
    """One image at a time, one location at a time, as the reference's loops would read."""
    bounds = [-1] + list(sizes) + [1e8]
    batch, count = len(boxes), len(locations)
    out_labels = np.full((batch, count), -1)
    out_boxes = np.zeros((batch, count, 4))
    out_ctr = np.zeros((batch, count))
    for b in range(batch):
        for n, ((x, y), level) in enumerate(zip(locations, levels)):
            stride = STRIDES[level]
            best, best_area = -1, np.inf
            for g, (box, label) in enumerate(zip(boxes[b], labels[b])):
                if label < 0:
                    continue
                x0, y0, x1, y1 = box
                reg = [x - x0, y - y0, x1 - x, y1 - y]
                if radius is None:
                    inside = min(reg) > 0
                else:
                    cx, cy = ((x0 + x1) / 2, (y0 + y1) / 2) if centers is None else centers[b][g]
                    r = radius * stride
                    sub = [max(cx - r, x0), max(cy - r, y0), min(cx + r, x1), min(cy + r, y1)]
                    inside = min(x - sub[0], y - sub[1], sub[2] - x, sub[3] - y) > 0
                in_range = bounds[level] <= max(reg) <= bounds[level + 1]
                area = (x1 - x0) * (y1 - y0)
                if inside and in_range and area < best_area:
                    best, best_area = g, area
            if best >= 0:
                x0, y0, x1, y1 = boxes[b][best]
                l, t, r, bb = x - x0, y - y0, x1 - x, y1 - y
                out_labels[b, n] = labels[b][best]
                out_boxes[b, n] = np.array([l, t, r, bb]) / stride
                out_ctr[b, n] = np.sqrt(min(l, r) / max(l, r) * min(t, bb) / max(t, bb))
    return out_labels, out_boxes, out_ctr


def random_ground_truth(rng, batch=2, count=6, size=256):
    boxes = np.zeros((batch, count, 4), np.float32)
    labels = np.full((batch, count), -1, np.int32)
    for b in range(batch):
        for g in range(count - b):
            w, h = np.exp(rng.uniform(np.log(6), np.log(size), 2))
            x0, y0 = rng.uniform(-10, size - w / 2, 2)
            boxes[b, g] = [x0, y0, x0 + w, y0 + h]
            labels[b, g] = rng.integers(0, 4)
    return boxes, labels


def to_numpy(targets):
    return {k: np.asarray(ops.convert_to_numpy(v)) for k, v in targets.items()}


@pytest.mark.parametrize("use_centers, radius", [(False, 1.5), (True, 1.5), (False, None)])
def test_matches_numpy_reference(use_centers, radius):
    rng = np.random.default_rng(7)
    boxes, labels = random_ground_truth(rng)
    # nested boxes make ambiguous locations: a big box around a smaller one
    boxes[0, 0], boxes[0, 1], labels[0, :2] = [20, 20, 220, 220], [90, 90, 150, 150], [1, 2]
    centers = None
    if use_centers:  # off-centre centres inside each box
        centers = np.stack([boxes[..., 0] + (boxes[..., 2] - boxes[..., 0]) * 0.3,
                            boxes[..., 1] + (boxes[..., 3] - boxes[..., 1]) * 0.7], -1).astype(np.float32)
    locations, levels = FCOSLocations()((256, 256))
    encoder = FCOSLabelEncoder(center_sampling_radius=radius)
    got = to_numpy(encoder(boxes, labels, locations, levels, centers))
    labels_np, boxes_np, ctr_np = numpy_fcos_targets(boxes.astype(np.float64), labels, locations, levels,
                                                     centers, radius)
    np.testing.assert_array_equal(got["labels"], labels_np)
    np.testing.assert_allclose(got["box_targets"], boxes_np, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["centerness_targets"], ctr_np, rtol=1e-5, atol=1e-6)
    assert (labels_np >= 0).sum() > 20
    assert np.array_equal(got["matched_gt"] >= 0, labels_np >= 0)


def test_ambiguous_location_takes_the_smallest_box_and_first_on_ties():
    locations = np.array([[100.0, 100.0]], np.float32)
    levels = np.array([0], np.int32)
    boxes = np.array([[[60, 60, 150, 150], [80, 80, 120, 120], [70, 70, 130, 130]]], np.float32)
    labels = np.array([[0, 1, 2]], np.int32)
    encoder = FCOSLabelEncoder(center_sampling_radius=None)
    got = to_numpy(encoder(boxes, labels, locations, levels))
    assert got["labels"].tolist() == [[1]] and got["matched_gt"].tolist() == [[1]]
    # two boxes of equal area: the first index wins
    tied = np.array([[[80, 70, 120, 130], [70, 80, 130, 120]]], np.float32)
    got = to_numpy(encoder(tied, np.array([[2, 3]], np.int32), locations, levels))
    assert got["matched_gt"].tolist() == [[0]] and got["labels"].tolist() == [[2]]


def test_size_of_interest_boundaries_are_inclusive():
    """max(l, t, r, b) exactly 64 belongs to both P3 ([-1, 64]) and P4 ([64, 128])."""
    encoder = FCOSLabelEncoder()
    cases = {  # (location, level, box around it) -> assigned
        "p3_exactly_64": ((100.0, 100.0), 0, [36, 70, 164, 130], True),
        "p3_just_above": ((100.0, 100.0), 0, [35.5, 70, 164.5, 130], False),
        "p4_exactly_64": ((104.0, 104.0), 1, [40, 74, 168, 134], True),
        "p4_just_below": ((104.0, 104.0), 1, [40.5, 74, 167.5, 134], False),
    }
    for name, (location, level, box, expected) in cases.items():
        got = to_numpy(encoder(np.array([[box]], np.float32), np.array([[0]], np.int32),
                               np.array([location], np.float32), np.array([level], np.int32)))
        assert bool(got["labels"][0, 0] >= 0) == expected, name


def test_center_sampling_is_strict_and_defaults_are_the_papers():
    encoder = FCOSLabelEncoder()
    assert encoder.center_sampling_radius == 1.5
    assert encoder.sizes_of_interest == (64.0, 128.0, 256.0, 512.0)
    assert encoder.strides == (8, 16, 32, 64, 128)
    locations = np.array([[112.0, 100.0], [111.0, 100.0]], np.float32)
    levels = np.array([0, 0], np.int32)
    box = np.array([[[60, 60, 140, 140]]], np.float32)
    centers = np.array([[[100.0, 100.0]]], np.float32)  # sub-box x in (88, 112): 112 is on the edge
    got = to_numpy(encoder(box, np.array([[0]], np.int32), locations, levels, centers))
    assert (got["labels"][0] >= 0).tolist() == [False, True]


def test_padding_only_is_background_and_config_round_trip():
    locations, levels = FCOSLocations()((64, 64))
    encoder = FCOSLabelEncoder(center_sampling_radius=2.0)
    got = to_numpy(encoder(np.zeros((1, 3, 4), np.float32), np.full((1, 3), -1, np.int32), locations, levels))
    assert (got["labels"] == -1).all() and (got["box_targets"] == 0).all() and (got["centerness_targets"] == 0).all()
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(encoder))
    assert revived.get_config() == encoder.get_config()
    assert revived.center_sampling_radius == 2.0
    with pytest.raises(ValueError, match="sizes_of_interest"):
        FCOSLabelEncoder(sizes_of_interest=(64, 128))
    with pytest.raises(ValueError, match="center_sampling_radius"):
        FCOSLabelEncoder(center_sampling_radius=0)


def test_mask_centers_match_numpy():
    rng = np.random.default_rng(3)
    masks = (rng.uniform(size=(2, 3, 6, 5)) > 0.6).astype(np.uint8)
    masks[1, 2] = 0  # empty: the box centre
    boxes = rng.uniform(0, 20, (2, 3, 4)).astype(np.float32)
    got = np.asarray(ops.convert_to_numpy(mask_centers(masks, boxes, 4)))
    for b in range(2):
        for m in range(3):
            ys, xs = np.nonzero(masks[b, m])
            if len(xs):
                # the full-resolution mask (each cell = 4 x 4 pixels) and integer pixel indices
                full = np.kron(masks[b, m], np.ones((4, 4)))
                fy, fx = np.nonzero(full)
                expected = [fx.mean(), fy.mean()]
            else:
                expected = [(boxes[b, m, 0] + boxes[b, m, 2]) / 2, (boxes[b, m, 1] + boxes[b, m, 3]) / 2]
            np.testing.assert_allclose(got[b, m], expected, rtol=1e-5)
