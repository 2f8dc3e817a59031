import functools

import hypothesis.extra.numpy as hnp
import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops

from keras_cvx.ops.boxes import (
    BOX_CODER_WEIGHTS,
    aligned_iou,
    box_area,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    pairwise_giou,
    pairwise_iou,
)
from tests.ops.compiled import run_compiled

SETTINGS = settings(max_examples=30, deadline=None)


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _random_boxes(rng, n, size=100.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(1, size / 2, (n, 2))
    return np.concatenate([xy, xy + wh], -1).astype("float32")


def _reference_iou_giou(a, b):
    """Loops over pairs, straight from the definitions."""
    iou = np.zeros((len(a), len(b)))
    giou = np.zeros((len(a), len(b)))
    for i, p in enumerate(a.astype(np.float64)):
        for j, q in enumerate(b.astype(np.float64)):
            iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - iw * ih
            hull = (max(p[2], q[2]) - min(p[0], q[0])) * (max(p[3], q[3]) - min(p[1], q[1]))
            iou[i, j] = iw * ih / union
            giou[i, j] = iou[i, j] - (hull - union) / hull
    return iou, giou


def test_iou_and_giou_match_reference():
    rng = np.random.default_rng(0)
    a, b = _random_boxes(rng, 7), _random_boxes(rng, 5)
    iou, giou = _reference_iou_giou(a, b)
    np.testing.assert_allclose(_np(pairwise_iou(a, b)), iou, atol=1e-6)
    np.testing.assert_allclose(_np(pairwise_giou(a, b)), giou, atol=1e-6)


def test_hand_computed_values():
    a = np.array([[0, 0, 10, 10]], "float32")
    b = np.array([[5, 0, 15, 10], [20, 0, 30, 10], [0, 0, 0, 0]], "float32")
    # overlap 50 / union 150; disjoint: hull 300, union 200 -> -1/3; empty box: IoU 0, GIoU 0 - 0.
    np.testing.assert_allclose(_np(pairwise_iou(a, b)), [[1 / 3, 0, 0]], atol=1e-7)
    np.testing.assert_allclose(_np(pairwise_giou(a, b)), [[1 / 3, -1 / 3, 0]], atol=1e-7)
    assert _np(pairwise_iou(b[2:], b[2:]))[0, 0] == 0.0  # empty union -> 0, not NaN
    np.testing.assert_allclose(_np(box_area(np.array([[0, 0, 2, 3], [5, 5, 4, 9]], "float32"))), [6, 0])


def test_batched_broadcast_and_float32_for_float16_inputs():
    rng = np.random.default_rng(1)
    a = np.stack([_random_boxes(rng, 4) for _ in range(3)])
    b = np.stack([_random_boxes(rng, 6) for _ in range(3)])
    out = pairwise_iou(a.astype("float16") * 40.0, b.astype("float16") * 40.0)
    assert tuple(out.shape) == (3, 4, 6) and ops.dtype(out) == "float32"
    for k in range(3):
        np.testing.assert_allclose(_np(out)[k], _reference_iou_giou(a[k] * 40, b[k] * 40)[0], atol=2e-3)
    big = np.array([[0, 0, 4000, 4000]], "float16")  # area 1.6e7 > float16 max
    assert _np(box_area(big))[0] == 1.6e7


def test_clip():
    boxes = np.array([[-5, -5, 50, 70], [10, 20, 30, 40]], "float32")
    np.testing.assert_array_equal(_np(clip_boxes(boxes, (60, 40))), [[0, 0, 40, 60], [10, 20, 30, 40]])


def test_encode_hand_computed_ssd_variances():
    anchor = np.array([[0, 0, 10, 20]], "float32")  # centre (5, 10), w 10, h 20
    box = np.array([[2, 4, 22, 24]], "float32")  # centre (12, 14), w 20, h 20
    expected = [7 / 10 / 0.1, 4 / 20 / 0.1, np.log(2) / 0.2, 0.0]
    np.testing.assert_allclose(_np(encode_boxes(box, anchor, BOX_CODER_WEIGHTS))[0], expected, rtol=1e-6)


def test_decode_clamps_scale_deltas():
    anchor = np.array([[0, 0, 10, 10]], "float32")
    out = _np(decode_boxes(np.array([[0, 0, 1e4, 1e4]], "float32"), anchor))
    np.testing.assert_allclose(out, [[5 - 5 * 1000 / 16, 5 - 5 * 1000 / 16, 5 + 5 * 1000 / 16, 5 + 5 * 1000 / 16]], rtol=1e-5)


def test_weights_validated():
    with pytest.raises(ValueError, match="weights"):
        encode_boxes(np.zeros((1, 4)), np.zeros((1, 4)), weights=(1, 1, 0, 1))


def test_compiled_equals_eager():
    rng = np.random.default_rng(2)
    a, b = _random_boxes(rng, 6), _random_boxes(rng, 6)
    fn = functools.partial(encode_boxes, weights=BOX_CODER_WEIGHTS)
    np.testing.assert_allclose(run_compiled(fn, b, a), _np(fn(b, a)), atol=1e-5)
    np.testing.assert_allclose(run_compiled(pairwise_giou, a, b), _np(pairwise_giou(a, b)), atol=1e-6)
    dec = functools.partial(decode_boxes, weights=BOX_CODER_WEIGHTS)
    d = _np(fn(b, a))
    np.testing.assert_allclose(run_compiled(dec, d, a), _np(dec(d, a)), atol=1e-4)


box_coords = hnp.arrays(
    np.float32, (5, 4), elements=st.floats(0, 500, width=32, allow_nan=False, allow_infinity=False)
)


def _to_boxes(raw, min_size):
    return np.concatenate([raw[:, :2], raw[:, :2] + min_size + raw[:, 2:] / 4], -1).astype("float32")


@SETTINGS
@given(box_coords, box_coords, st.sampled_from([(1.0, 1.0, 1.0, 1.0), BOX_CODER_WEIGHTS]))
def test_encode_decode_round_trip(raw_boxes, raw_anchors, weights):
    boxes, anchors = _to_boxes(raw_boxes, 1.0), _to_boxes(raw_anchors, 4.0)
    decoded = _np(decode_boxes(encode_boxes(boxes, anchors, weights), anchors, weights))
    np.testing.assert_allclose(decoded, boxes, atol=2e-3 * (1 + np.abs(boxes)).max())


@SETTINGS
@given(box_coords, box_coords)
def test_iou_properties(raw_a, raw_b):
    a, b = _to_boxes(raw_a, 0.5), _to_boxes(raw_b, 0.5)
    iou, giou = _np(pairwise_iou(a, b)), _np(pairwise_giou(a, b))
    assert np.all((iou >= 0) & (iou <= 1 + 1e-6))
    assert np.all((giou >= -1 - 1e-6) & (giou <= iou + 1e-6))
    np.testing.assert_allclose(iou, _np(pairwise_iou(b, a)).T, atol=1e-6)  # symmetry
    np.testing.assert_allclose(np.diag(_np(pairwise_iou(a, a))), 1.0, atol=1e-5)  # self IoU
    shift = np.array([7.0, -3.0, 7.0, -3.0], "float32")  # translation invariance
    np.testing.assert_allclose(_np(pairwise_iou(a + shift, b + shift)), iou, atol=1e-4)
    np.testing.assert_allclose(_np(pairwise_giou(a * 2, b * 2)), giou, atol=1e-4)  # scale invariance


def _reference_aligned_iou(a, b):
    """Element-wise IoU straight from the definition (0 where the union is empty)."""
    a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
    iw = np.maximum(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0)
    ih = np.maximum(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0)
    area = lambda x: np.maximum(x[..., 2] - x[..., 0], 0) * np.maximum(x[..., 3] - x[..., 1], 0)  # noqa: E731
    union = area(a) + area(b) - iw * ih
    return np.where(union > 0, iw * ih / np.where(union > 0, union, 1), 0.0)


def test_aligned_iou_special_cases():
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 1, 1], [3, 4, 9, 8], [1, 1, 1, 5], [2, 2, 2, 2], [0, 0, 4, 4],
                  [5, 5, 2, 2]], "float32")
    b = np.array([[1, 1, 3, 3], [5, 5, 6, 6], [1, 0, 2, 1], [3, 4, 9, 8], [0, 0, 4, 4], [2, 2, 2, 2], [1, 1, 2, 3],
                  [0, 0, 4, 4]], "float32")
    # overlap 1/7, disjoint, touching edges, identical, zero-area inside a box, two equal points
    # (empty union), contained (2/16), inverted box (area 0)
    expected = [1 / 7, 0.0, 0.0, 1.0, 0.0, 0.0, 2 / 16, 0.0]
    iou = _np(aligned_iou(a, b))
    assert iou.dtype == np.float32 and iou.shape == (8,)
    np.testing.assert_allclose(iou, expected, atol=1e-7)
    np.testing.assert_allclose(iou, _reference_aligned_iou(a, b), atol=1e-7)
    np.testing.assert_allclose(_np(aligned_iou(b, a)), iou, atol=1e-7)  # symmetric


def test_aligned_iou_random_broadcast_and_float16():
    rng = np.random.default_rng(5)
    a, b = _random_boxes(rng, 24).reshape(2, 3, 4, 4), _random_boxes(rng, 4)
    iou = _np(aligned_iou(a, b))  # [2, 3, 4] against [4]: broadcast
    assert iou.shape == (2, 3, 4) and np.any(iou > 0)
    np.testing.assert_allclose(iou, _reference_aligned_iou(a, b), atol=1e-6)
    np.testing.assert_allclose(np.diagonal(_np(pairwise_iou(a[0, 0], b))), iou[0, 0], atol=1e-6)
    big = np.array([[0, 0, 1000, 1000]], "float32")  # areas 1e6 overflow float16: computed in float32
    out = aligned_iou(big.astype("float16"), (big / 2).astype("float16"))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_allclose(_np(out), 0.25, rtol=1e-6)
    np.testing.assert_allclose(run_compiled(aligned_iou, a, b), iou, atol=1e-6)
    with pytest.raises(ValueError, match="boxes2"):
        aligned_iou(a, np.zeros((4, 3), "float32"))


def _aligned_iou_gradient(a, b):
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        a = tf.constant(a)
        with tf.GradientTape() as tape:
            tape.watch(a)
            value = tf.reduce_sum(aligned_iou(a, b))
        return _np(tape.gradient(value, a))
    import jax

    return _np(jax.grad(lambda x: jax.numpy.sum(aligned_iou(x, b)))(a))


def test_aligned_iou_gradient_finite_and_correct():
    a = np.array([[0, 0, 2, 2], [2, 2, 2, 2], [0, 0, 4, 4]], "float32")
    b = np.array([[1, 1, 3, 3], [2, 2, 2, 2], [1, 1, 2, 3]], "float32")
    grad = _aligned_iou_gradient(a, b)
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[1], 0.0)  # empty union: IoU 0 and no NaN gradient
    # overlap I = 1, U = 4 + 4 - I = 7; d / d x2 of the first box: dI = h_I = 1, dU = h_a - h_I = 1,
    # d IoU = (dI U - I dU) / U² = 6 / 49
    np.testing.assert_allclose(grad[0, 2], 6 / 49, rtol=1e-5)
    # b inside a: I = 2 fixed, IoU = 2 / area(a); d / d x2 = -2 * 4 / 16² = -1/32
    np.testing.assert_allclose(grad[2], [1 / 32, 1 / 32, -1 / 32, -1 / 32], rtol=1e-5)
