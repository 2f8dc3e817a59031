"""Tests for keras_cvx.models.anchor_generators.ssd: SSD300/512's COCO anchors, the SSD paper's
scale rule for other pyramids (numbers written out by hand), overrides and the config."""

import numpy as np
import pytest
from keras import ops

from keras_cvx.models.anchor_generators.ssd import SSDAnchorGenerator
from keras_cvx.ops.anchors import ssd_anchors


def test_ssd300_and_ssd512_are_the_coco_anchors():
    generator = SSDAnchorGenerator()
    anchors = generator(300, (38, 19, 10, 5, 3, 1))
    assert anchors.shape == (8732, 4) and anchors.dtype == np.float32
    np.testing.assert_array_equal(anchors, ops.convert_to_numpy(ssd_anchors(300)))
    assert generator(512, (64, 32, 16, 8, 4, 2, 1)).shape == (24564, 4)
    assert generator.anchors_per_location(512, (64, 32, 16, 8, 4, 2, 1)) == (4, 6, 6, 6, 6, 4, 4)


def test_paper_rule_for_other_pyramids():
    """SSD eq. 4 with L = 4 levels at 64 px: scales 0.1, 0.2, 0.55, 0.9 (and 1.25 for the last
    max size); steps 64 / f; ratios (2), (2, 3), (2), (2)."""
    settings = SSDAnchorGenerator().settings(64, (8, 4, 2, 1))
    np.testing.assert_allclose(settings["steps"], [8, 16, 32, 64])
    np.testing.assert_allclose(settings["min_sizes"], [6.4, 12.8, 35.2, 57.6])
    np.testing.assert_allclose(settings["max_sizes"], [12.8, 35.2, 57.6, 80.0])
    assert settings["aspect_ratios"] == ((2,), (2, 3), (2,), (2,))
    anchors = SSDAnchorGenerator()(64, (8, 4, 2, 1))
    assert anchors.shape == (64 * 4 + 16 * 6 + 4 * 4 + 4, 4)
    # the first cell of level 1: centre (4, 4); squares 6.4 and sqrt(6.4 * 12.8); 6.4·√2 × 6.4/√2
    np.testing.assert_allclose(anchors[0], [0.8, 0.8, 7.2, 7.2], atol=1e-5)
    big = np.sqrt(6.4 * 12.8) / 2
    np.testing.assert_allclose(anchors[1], [4 - big, 4 - big, 4 + big, 4 + big], atol=1e-5)
    w, h = 6.4 * np.sqrt(2), 6.4 / np.sqrt(2)
    np.testing.assert_allclose(anchors[2], [4 - w / 2, 4 - h / 2, 4 + w / 2, 4 + h / 2], atol=1e-5)
    # two levels: scales 0.2, 0.55, 0.9 spread evenly
    np.testing.assert_allclose(SSDAnchorGenerator().settings(100, (2, 1))["min_sizes"], [20, 55])


def test_overrides_clip_and_config_round_trip():
    generator = SSDAnchorGenerator(min_sizes=(10, 20), max_sizes=(20, 40), aspect_ratios=((2,), (3,)),
                                   clip="center_size")
    settings = generator.settings(64, (4, 2))
    assert settings["min_sizes"] == (10.0, 20.0) and settings["steps"] == (16.0, 32.0)
    revived = SSDAnchorGenerator.from_config(generator.get_config())
    np.testing.assert_array_equal(revived(64, (4, 2)), generator(64, (4, 2)))
    clipped = SSDAnchorGenerator(clip=True)(300, (38, 19, 10, 5, 3, 1))
    assert clipped.min() >= 0 and clipped.max() <= 300


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="clip"):
        SSDAnchorGenerator(clip="centre")
    with pytest.raises(ValueError, match="min_sizes"):
        SSDAnchorGenerator(min_sizes=(10,)).settings(64, (4, 2))
