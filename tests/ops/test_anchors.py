import numpy as np
import pytest
from keras import ops

from keras_cvx.ops.anchors import fcos_locations, fpn_anchors, ssd_anchors


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def test_ssd_prior_counts():
    assert tuple(ssd_anchors(300).shape) == (8732, 4)
    assert tuple(ssd_anchors(512).shape) == (24564, 4)
    # the 6-level 512 layout of the spec (1x1 level dropped) has 24560
    six = ssd_anchors(
        512, feature_sizes=(64, 32, 16, 8, 4, 2), steps=(8, 16, 32, 64, 128, 256),
        min_sizes=(20.48, 51.2, 133.12, 215.04, 296.96, 378.88),
        max_sizes=(51.2, 133.12, 215.04, 296.96, 378.88, 460.8),
        aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,)),
    )
    assert tuple(six.shape) == (24560, 4)


def test_ssd_prior_order_and_values_hand_computed():
    priors = _np(ssd_anchors(300))
    # level 0, cell (0, 0): centre (4, 4); boxes 21x21, sqrt(21*45) square, then ar 2 pair.
    s = np.sqrt(21 * 45)
    r = np.sqrt(2)
    expected = [
        [4 - 10.5, 4 - 10.5, 4 + 10.5, 4 + 10.5],
        [4 - s / 2, 4 - s / 2, 4 + s / 2, 4 + s / 2],
        [4 - 21 * r / 2, 4 - 21 / r / 2, 4 + 21 * r / 2, 4 + 21 / r / 2],
        [4 - 21 / r / 2, 4 - 21 * r / 2, 4 + 21 / r / 2, 4 + 21 * r / 2],
    ]
    np.testing.assert_allclose(priors[:4], expected, rtol=1e-5)
    # cell (0, 1) follows (row-major): centre x 12
    np.testing.assert_allclose((priors[4, 0] + priors[4, 2]) / 2, 12.0)
    # cell (1, 0) starts after the 38 cells of row 0
    np.testing.assert_allclose((priors[38 * 4, 1] + priors[38 * 4, 3]) / 2, 12.0)
    # the last prior: 1x1 level, centre 150, box (261/sqrt2, 261*sqrt2)
    np.testing.assert_allclose(priors[-1], [150 - 261 / r / 2, 150 - 261 * r / 2, 150 + 261 / r / 2, 150 + 261 * r / 2], rtol=1e-5)
    clipped = _np(ssd_anchors(300, clip=True))
    assert clipped.min() == 0.0 and clipped.max() == 300.0 and priors.min() < 0


def numpy_center_size_clamp(priors, size):
    """ssd.pytorch / lufficc PriorBox with clip: the normalised (cx, cy, w, h) clamped to [0, 1]."""
    normalised = priors / size
    cx, cy = normalised[:, 0::2].mean(1), normalised[:, 1::2].mean(1)
    w, h = normalised[:, 2] - normalised[:, 0], normalised[:, 3] - normalised[:, 1]
    cx, cy, w, h = (np.clip(v, 0.0, 1.0) for v in (cx, cy, w, h))
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1) * size


@pytest.mark.parametrize("size, changed, corner_changed, differ", [(300, 116, 2223, 2221), (512, 42, 4118, 4116)])
def test_center_size_clip_is_the_pytorch_ports_and_differs_from_corner_clip(size, changed, corner_changed, differ):
    priors = _np(ssd_anchors(size)).astype(np.float64)
    ported = _np(ssd_anchors(size, clip="center_size"))
    corners = _np(ssd_anchors(size, clip="corners"))
    np.testing.assert_allclose(ported, numpy_center_size_clamp(priors, size), atol=1e-3)
    np.testing.assert_array_equal(corners, _np(ssd_anchors(size, clip=True)))
    np.testing.assert_allclose(corners, np.clip(priors, 0, size), atol=1e-4)

    def count(a, b):
        return int((np.abs(a - b).max(1) > 1e-3).sum())

    assert (count(ported, priors), count(corners, priors), count(ported, corners)) == (changed, corner_changed, differ)


def test_ssd_unknown_clip_mode_is_rejected():
    with pytest.raises(ValueError, match="clip"):
        ssd_anchors(300, clip="centre")


def test_ssd_unknown_size_needs_settings():
    with pytest.raises(ValueError, match="image_size"):
        ssd_anchors(320)


def test_fpn_anchors_layout():
    anchors = _np(fpn_anchors((64, 96)))
    counts = [16 * 24, 8 * 12, 4 * 6, 2 * 3, 1 * 2]
    assert anchors.shape == (3 * sum(counts), 4)
    # first cell of P2: centre (0, 0), size 32, ratios h/w 0.5, 1, 2
    w = [32 / np.sqrt(0.5), 32.0, 32 / np.sqrt(2)]
    h = [32 * np.sqrt(0.5), 32.0, 32 * np.sqrt(2)]
    np.testing.assert_allclose(anchors[:3], np.stack([-np.array(w) / 2, -np.array(h) / 2, np.array(w) / 2, np.array(h) / 2], -1), rtol=1e-6)
    np.testing.assert_allclose(anchors[3, [0, 2]].mean(), 4.0)  # next column, stride 4
    start_p3 = 3 * counts[0]
    np.testing.assert_allclose(anchors[start_p3 + 1, 2] - anchors[start_p3 + 1, 0], 64.0)
    areas = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    np.testing.assert_allclose(areas[:3], 32.0 ** 2, rtol=1e-5)  # ratios keep the area
    shifted = _np(fpn_anchors(64, strides=(8,), sizes=(32,), aspect_ratios=(1.0,), scales=(1.0, 2.0), offset=0.5))
    np.testing.assert_allclose(shifted[:2], [[-12, -12, 20, 20], [-28, -28, 36, 36]])


def test_fpn_anchors_validation():
    with pytest.raises(ValueError, match="sizes"):
        fpn_anchors(64, sizes=(32,))
    with pytest.raises(ValueError, match="aspect_ratios"):
        fpn_anchors(64, aspect_ratios=(0.0,))


def test_fcos_locations():
    points, levels = fcos_locations((64, 32), strides=(8, 16))
    points, levels = _np(points), _np(levels)
    assert points.shape == (8 * 4 + 4 * 2, 2) and levels.dtype == np.int32
    np.testing.assert_array_equal(points[:5], [[4, 4], [12, 4], [20, 4], [28, 4], [4, 12]])
    np.testing.assert_array_equal(points[32:34], [[8, 8], [24, 8]])
    np.testing.assert_array_equal(np.bincount(levels), [32, 8])
