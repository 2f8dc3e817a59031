"""Tests for keras_cvx.models.anchor_generators.fpn against anchors written out with NumPy loops."""

import numpy as np
import pytest

from keras_cvx.models.anchor_generators.fpn import FPNAnchorGenerator


def numpy_fpn_anchors(height, width, strides, sizes, ratios, scales):
    boxes = []
    for stride, size in zip(strides, sizes):
        for i in range(-(-height // stride)):
            for j in range(-(-width // stride)):
                for r in ratios:
                    for s in scales:
                        w, h = size * s / np.sqrt(r), size * s * np.sqrt(r)
                        cx, cy = j * stride, i * stride
                        boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return np.array(boxes)


def test_matches_numpy_loops_and_counts():
    generator = FPNAnchorGenerator(strides=(8, 16), sizes=(32, 64), aspect_ratios=(0.5, 1.0, 2.0), scales=(1.0, 2.0))
    anchors = generator((40, 24))
    expected = numpy_fpn_anchors(40, 24, (8, 16), (32, 64), (0.5, 1.0, 2.0), (1.0, 2.0))
    np.testing.assert_allclose(anchors, expected, rtol=1e-6, atol=1e-4)
    assert generator.anchors_per_location == 6
    # Faster R-CNN + FPN defaults on P2..P6 of a 64×64 image: (256 + 64 + 16 + 4 + 1) cells × 3
    assert FPNAnchorGenerator()((64, 64)).shape == (1023, 4)
    # ratio 1 at size 32 is the 32×32 square centred on the cell corner
    np.testing.assert_allclose(FPNAnchorGenerator()((64, 64))[1], [-16, -16, 16, 16])


def test_config_round_trip_and_bad_arguments():
    generator = FPNAnchorGenerator(strides=(8,), sizes=(24,), scales=(1.0, 1.26))
    revived = FPNAnchorGenerator.from_config(generator.get_config())
    np.testing.assert_array_equal(revived((32, 32)), generator((32, 32)))
    with pytest.raises(ValueError, match="sizes"):
        FPNAnchorGenerator(strides=(8, 16), sizes=(32,))
    with pytest.raises(ValueError, match="aspect_ratios"):
        FPNAnchorGenerator(aspect_ratios=(0.0,))
