import numpy as np
import pytest
from keras import ops

from keras_cvx.layers.deformable_roi_pool import DeformableRoIPool
from tests.ops.test_deformable_roi_pool import _ref_pool
from tests.test_case import run_layer_test

RNG = np.random.default_rng(0)
FEATURES = RNG.normal(size=(2, 12, 10, 4)).astype("float32")
BOXES = np.array([[[4, 4, 30, 20], [-6, 2, 20, 40]], [[10, 12, 36, 44], [0, 0, 79, 95]]], "float32")
OFFSETS = RNG.normal(size=(2, 2, 3, 3, 2)).astype("float32")


def _expected(offsets, n):
    return np.stack([np.stack([_ref_pool(FEATURES[b], BOXES[b, r], offsets[b, r], 1 / 8, 3, n=n) for r in range(2)])
                     for b in range(2)]).astype("float32")


def test_harness_single_map():
    run_layer_test(
        DeformableRoIPool,
        dict(output_size=3, spatial_scale=1 / 8, sampling_ratio=2, gamma=0.1),
        [FEATURES, BOXES, OFFSETS],
        expected_output_shape=(2, 2, 3, 3, 4),
        expected_output=_expected(OFFSETS, 2),
        expected_num_trainable_weights=0,
        run_training_check=False,  # no weights
        tolerance=1e-4,
    )


def test_per_roi_offsets_and_defaults():
    layer = DeformableRoIPool(output_size=3, spatial_scale=1 / 8)
    assert (layer.sampling_ratio, layer.gamma, layer.min_level) == (4, 0.1, 2)
    out = ops.convert_to_numpy(layer(FEATURES, BOXES, OFFSETS[:, :, 0, 0]))
    np.testing.assert_allclose(out, _expected(np.broadcast_to(OFFSETS[:, :, :1, :1], OFFSETS.shape), 4), atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(layer(FEATURES, BOXES)), _expected(np.zeros_like(OFFSETS), 4),
                               atol=1e-5)


def test_pyramid_and_mixed_precision_keeps_boxes_float32():
    pyramid = [RNG.normal(size=(2, 128 // 2**k, 128 // 2**k, 4)).astype("float32") for k in range(2, 5)]
    boxes = np.array([[[0, 0, 40, 40], [5, 5, 150, 130]], [[10.3, 20.7, 250.5, 250.2], [40, 8, 50, 20]]], "float32")
    layer = DeformableRoIPool(output_size=3, sampling_ratio=2, dtype="mixed_float16")
    out = layer(pyramid, boxes, OFFSETS)
    assert ops.dtype(out) == "float16"
    assert layer.compute_output_shape([p.shape for p in pyramid], boxes.shape, OFFSETS.shape) == (2, 2, 3, 3, 4)
    sizes = np.sqrt((boxes[..., 2] - boxes[..., 0] + 1) * (boxes[..., 3] - boxes[..., 1] + 1))
    levels = np.clip(np.floor(np.log2(sizes / 56 + 1e-6)), 0, 2).astype(int) + 2  # mmdet v1 map_roi_levels
    assert sorted(set(levels.ravel())) == [2, 3, 4]
    for b in range(2):
        for r in range(2):
            k = levels[b, r]
            expected = _ref_pool(pyramid[k - 2][b], boxes[b, r], OFFSETS[b, r], 2.0**-k, 3, n=2)
            np.testing.assert_allclose(ops.convert_to_numpy(out[b, r]).astype("float32"), expected, atol=2e-2)


def test_argument_validation():
    with pytest.raises(ValueError, match="spatial_scale"):
        DeformableRoIPool(output_size=3)(FEATURES, BOXES)
    with pytest.raises(ValueError, match="output_size"):
        DeformableRoIPool(output_size=0, spatial_scale=0.25)
    with pytest.raises(ValueError, match="sampling_ratio"):
        DeformableRoIPool(sampling_ratio=1.5, spatial_scale=0.25)
    with pytest.raises(ValueError, match="gamma"):
        DeformableRoIPool(gamma="0.1", spatial_scale=0.25)
    with pytest.raises(ValueError, match="features` holds 1 images"):
        DeformableRoIPool(output_size=3, spatial_scale=0.25)(FEATURES[:1], BOXES)
