"""Tests for keras_cvx.models.anchor_generators.fcos.FCOSLocations: FCOS's points
(floor(s/2) + j s, floor(s/2) + i s) per level (arXiv 1904.01355 Sec. 3.1), order, defaults."""

import keras
import numpy as np
import pytest

from keras_cvx.models.anchor_generators.fcos import FCOSLocations


def test_points_levels_and_order():
    locations, levels = FCOSLocations(strides=(8, 16))((24, 40))
    assert locations.dtype == np.float32 and levels.dtype == np.int32
    # level 0: 3 x 5 points at 4, 12, 20 (+ 28, 36 in x); level 1: 2 x 3 points at 8, 24 (+ 40)
    expected0 = [(x, y) for y in (4, 12, 20) for x in (4, 12, 20, 28, 36)]
    expected1 = [(x, y) for y in (8, 24) for x in (8, 24, 40)]
    np.testing.assert_array_equal(locations, np.array(expected0 + expected1, np.float32))
    np.testing.assert_array_equal(levels, [0] * 15 + [1] * 6)


def test_defaults_and_explicit_feature_sizes():
    generator = FCOSLocations()
    assert generator.strides == (8, 16, 32, 64, 128)  # P3..P7
    locations, levels = generator((800, 800))
    assert len(locations) == 100 * 100 + 50 * 50 + 25 * 25 + 13 * 13 + 7 * 7 == 13_343
    np.testing.assert_array_equal(locations[levels == 4][0], [64, 64])
    # explicit feature sizes win over ceil(H / s)
    locations, levels = generator((64, 64), [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)])
    assert np.bincount(levels).tolist() == [64, 16, 4, 1, 1]


def test_serialization_and_validation():
    generator = FCOSLocations(strides=(8, 16, np.int64(32)))
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(generator))
    assert isinstance(revived, FCOSLocations) and revived.get_config() == {"strides": [8, 16, 32]}
    with pytest.raises(ValueError, match="strides"):
        FCOSLocations(strides=(8, 0))
    with pytest.raises(ValueError, match="strides"):
        FCOSLocations(strides=())
