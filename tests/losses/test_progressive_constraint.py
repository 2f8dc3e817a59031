"""Tests for keras_cvx.losses.progressive_constraint (TSD's PC, arXiv 2003.07540 eqs. 7-8): values
against NumPy, the boundary q − p = min(m, 1 − p), the clamp of the margin for p > 1 − m, masks,
true-class probabilities of every classifier, and the gradient paths: none into the sibling
head, the analytic gradient into the TSD logits, and M_loc's gradient into ΔR through the
shifted proposal (against finite differences)."""

import functools

import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.heads.tsd import shift_proposals
from keras_cvx.losses.progressive_constraint import (
    classification_progressive_constraint,
    localization_progressive_constraint,
    progressive_constraint,
    true_class_probability,
)
from keras_cvx.ops.boxes import BOX_CODER_WEIGHTS, decode_boxes
from tests.ops.compiled import run_compiled


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


def _reference(p, q, margin, mask=None):
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    mask = np.ones_like(p) if mask is None else np.asarray(mask, np.float64)
    hinge = np.maximum(0.0, p + np.minimum(1 - p, margin) - q)
    return (hinge * (mask > 0)).sum() / max((mask > 0).sum(), 1)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_matches_numpy_on_random_values():
    rng = np.random.default_rng(0)
    p, q = rng.uniform(size=(2, 50)).astype("float32"), rng.uniform(size=(2, 50)).astype("float32")
    mask = rng.uniform(size=(2, 50)) > 0.3
    for margin in (0.3, 0.2, 0.0, 1.0):
        value = progressive_constraint(p, q, margin)
        assert keras.backend.standardize_dtype(value.dtype) == "float32" and tuple(value.shape) == ()
        np.testing.assert_allclose(_np(value), _reference(p, q, margin), rtol=1e-5)
        np.testing.assert_allclose(_np(progressive_constraint(p, q, margin, mask)), _reference(p, q, margin, mask),
                                   rtol=1e-5)
    np.testing.assert_allclose(_np(progressive_constraint(p.astype("float16"), q.astype("bfloat16"), 0.3)),
                               _reference(p.astype("float16"), q.astype("bfloat16").astype("float32"), 0.3), rtol=1e-3)


def test_zero_exactly_at_the_margin_and_clamped_margin():
    # p + min(1 - p, m) in float32 is the target; q at the target gives exactly 0, just below it the gap.
    p = np.array([0.5, 0.25, 0.75, 0.875, 0.5, 1.0], "float32")
    target = np.array([0.75, 0.5, 1.0, 1.0, 0.75, 1.0], "float32")  # m = 0.25; p > 0.75: 1 − p < m, target 1
    assert _np(progressive_constraint(p, target, 0.25)) == 0.0
    assert _np(progressive_constraint(p, target + 0.125, 0.25)) == 0.0  # q beyond the target
    np.testing.assert_array_equal(_np(progressive_constraint(p, target - 2.0**-6, 0.25)), 2.0**-6)
    # m = 0.3: for p = 0.8 the margin is clamped to 0.2 (target 1, not 1.1).
    assert _np(progressive_constraint(np.float32([0.8]), np.float32([1.0]), 0.3)) == 0.0
    np.testing.assert_allclose(_np(progressive_constraint(np.float32([0.8]), np.float32([0.9]), 0.3)), 0.1, rtol=1e-6)
    np.testing.assert_allclose(_np(progressive_constraint(np.float32([0.6]), np.float32([0.9]), 0.3)), 0.0, atol=1e-7)
    q = np.float32(np.float32(0.4) + np.float32(0.3))  # the float32 target of p = 0.4, m = 0.3
    assert _np(progressive_constraint(np.float32([0.4]), np.float32([q]), 0.3)) == 0.0


def test_no_element_counts_gives_zero():
    p, q = np.array([0.2, 0.5], "float32"), np.array([0.0, 0.0], "float32")
    value = _np(progressive_constraint(p, q, 0.3, weights=np.zeros(2)))
    assert value == 0.0 and np.isfinite(value)
    assert _np(progressive_constraint(np.zeros((0,), "float32"), np.zeros((0,), "float32"))) == 0.0
    np.testing.assert_allclose(_np(progressive_constraint(p, q, 0.3, weights=np.array([False, True]))), 0.8, rtol=1e-6)
    with pytest.raises(ValueError, match="margin"):
        progressive_constraint(p, q, margin=-0.1)


def test_true_class_probability_of_every_classifier():
    rng = np.random.default_rng(1)
    z4 = rng.normal(size=(6, 4)).astype("float32")  # K = 3 with a background column
    z3 = z4[:, :3]  # K = 3 without
    labels = np.array([0, 1, 2, 3, -1, 3])
    rows = np.arange(6)
    expected = _softmax(z4.astype(np.float64))[rows, np.maximum(labels, 0)] * (labels >= 0)
    np.testing.assert_allclose(_np(true_class_probability(z4, labels, "softmax")), expected, rtol=1e-5)
    expected = _sigmoid(z4.astype(np.float64))[rows, np.maximum(labels, 0)] * (labels >= 0)
    np.testing.assert_allclose(_np(true_class_probability(z4, labels, "eqlv2")), expected, rtol=1e-5)
    s = _sigmoid(z3.astype(np.float64))
    expected = np.where(labels == 3, np.prod(1 - s, -1), s[rows, np.clip(labels, 0, 2)]) * (labels >= 0)
    for loss in ("sigmoid", "eql"):
        np.testing.assert_allclose(_np(true_class_probability(z3, labels, loss)), expected, rtol=1e-5)
    # Large logits: Π (1 − σ(z)) computed in log space stays finite and accurate.
    big = np.array([[30.0, -30.0, 0.0]], "float32")
    np.testing.assert_allclose(_np(true_class_probability(big, np.array([3]), "sigmoid")),
                               [np.exp(-np.log1p(np.exp(30.0)) - np.log1p(np.exp(-30.0)) - np.log(2.0))], rtol=1e-4)
    with pytest.raises(ValueError, match="labels"):
        true_class_probability(z3, np.array([4]), "sigmoid")
    with pytest.raises(ValueError, match="classification_loss"):
        true_class_probability(z3, np.array([0]), "focal")


def _grad(fn, *args):
    """Gradients of the scalar ``fn(*args)`` with respect to every argument."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        variables = [tf.constant(a) for a in args]
        with tf.GradientTape() as tape:
            tape.watch(variables)
            value = fn(*variables)
        grads = tape.gradient(value, variables)
        return [np.zeros(np.shape(a)) if g is None else _np(g) for g, a in zip(grads, args)]
    import jax

    return [_np(g) for g in jax.grad(fn, argnums=tuple(range(len(args))))(*args)]


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_classification_gradients(loss):
    rng = np.random.default_rng(2)
    columns = 4 if loss == "softmax" else 3  # K = 3
    sibling = rng.normal(size=(2, 5, columns)).astype("float32")
    tsd = rng.normal(size=(2, 5, columns)).astype("float32")
    labels = np.array([[0, 3, 1, -1, 2], [3, 3, 2, 0, -1]])
    fn = functools.partial(classification_progressive_constraint, labels=labels, classification_loss=loss, margin=0.3)
    d_sibling, d_tsd = _grad(fn, sibling, tsd)
    np.testing.assert_array_equal(d_sibling, 0.0)  # the sibling head is detached
    # NumPy: L = Σ_i a_i (t_i − q_i) / N over the N labelled RoIs, a_i = [t_i > q_i].
    valid, rows = labels >= 0, np.maximum(labels, 0)
    z = tsd.astype(np.float64)
    if loss == "softmax":
        probabilities = _softmax(sibling.astype(np.float64)), _softmax(z)
        p, q = (np.take_along_axis(x, rows[..., None], -1)[..., 0] for x in probabilities)
        dq = q[..., None] * (np.eye(columns)[rows] - probabilities[1])
    else:
        s_sib, s = _sigmoid(sibling.astype(np.float64)), _sigmoid(z)
        background = labels == 3
        pick = np.minimum(rows, 2)[..., None]
        p = np.where(background, np.prod(1 - s_sib, -1), np.take_along_axis(s_sib, pick, -1)[..., 0])
        q = np.where(background, np.prod(1 - s, -1), np.take_along_axis(s, pick, -1)[..., 0])
        dq = np.where(background[..., None], -q[..., None] * s, np.eye(3)[pick[..., 0]] * (q * (1 - q))[..., None])
    active = valid & (p + np.minimum(1 - p, 0.3) > q)
    assert active.sum() >= 3
    expected = -(active[..., None] * dq) / valid.sum()
    np.testing.assert_allclose(d_tsd, expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(_np(fn(sibling, tsd)), _reference(p, q, 0.3, valid), rtol=1e-5)


PROPOSALS = np.array([[10, 10, 49, 59], [100, 40, 159, 99], [0, 0, 29, 19], [5, 5, 24, 44]], "float32")
GROUND_TRUTH = np.array([[14, 16, 55, 66], [95, 48, 150, 110], [3, 2, 33, 23], [60, 60, 80, 80]], "float32")
POSITIVE = np.array([True, True, True, False])


def _localization(region_offsets, sibling_deltas, tsd_deltas):
    """M_loc of decode(P, sibling deltas) and decode(P̂_r(ΔR), TSD deltas) against the ground truth."""
    sibling_boxes = decode_boxes(sibling_deltas, PROPOSALS, BOX_CODER_WEIGHTS)
    tsd_boxes = decode_boxes(tsd_deltas, shift_proposals(PROPOSALS, region_offsets), BOX_CODER_WEIGHTS)
    return localization_progressive_constraint(sibling_boxes, tsd_boxes, GROUND_TRUTH, POSITIVE, margin=0.3)


def test_localization_gradient_reaches_region_offsets():
    # Every decoded TSD box overlaps its ground truth partly along x and y (so every coordinate of
    # ΔR matters) and has a lower IoU than the sibling's + 0.3 (every positive is active).
    region_offsets = np.array([[0.3, -0.2], [-0.4, 0.5], [0.2, 0.1], [0.1, 0.1]], "float32")
    sibling_deltas = np.zeros((4, 4), "float32")  # B̂ = P
    tsd_deltas = np.array([[0.2, -0.1, 0.1, 0.05], [-0.1, 0.3, -0.2, 0.1], [0.1, 0.1, 0.0, -0.1], [0, 0, 0, 0]],
                          "float32")
    d_region, d_sibling, d_tsd = _grad(_localization, region_offsets, sibling_deltas, tsd_deltas)
    np.testing.assert_array_equal(d_sibling, 0.0)  # the sibling boxes are detached
    assert np.all(d_region[:3] != 0) and np.all(d_region[3] == 0)  # positives only
    assert np.any(d_tsd != 0)
    value = _np(_localization(region_offsets, sibling_deltas, tsd_deltas))
    assert value > 0.05
    # Central finite differences in float32 (every positive stays on the active side of the hinge).
    eps = 1e-2
    numeric = np.zeros_like(d_region)
    for index in np.ndindex(region_offsets.shape):
        step = np.zeros_like(region_offsets)
        step[index] = eps
        plus = _np(_localization(region_offsets + step, sibling_deltas, tsd_deltas))
        minus = _np(_localization(region_offsets - step, sibling_deltas, tsd_deltas))
        numeric[index] = (plus - minus) / (2 * eps)
    np.testing.assert_allclose(d_region, numeric, rtol=2e-2, atol=2e-4)


def test_localization_value_against_numpy_iou():
    sibling = np.array([[12, 10, 50, 60], [100, 40, 160, 100], [3, 2, 33, 23], [0, 0, 1, 1]], "float32")
    tsd = np.array([[14, 9, 54, 64], [90, 40, 150, 100], [3, 2, 18, 23], [60, 60, 80, 80]], "float32")

    def iou(a, b):
        iw = np.maximum(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0)
        ih = np.maximum(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0)
        area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
        return iw * ih / (area(a) + area(b) - iw * ih)

    u, v = iou(sibling.astype(np.float64), GROUND_TRUTH), iou(tsd.astype(np.float64), GROUND_TRUTH)
    assert u[2] == 1.0  # a perfect sibling box: margin clamped to 0, target 1
    np.testing.assert_allclose(_np(localization_progressive_constraint(sibling, tsd, GROUND_TRUTH, POSITIVE)),
                               _reference(u, v, 0.3, POSITIVE), rtol=1e-5)


def test_compiled_equals_eager():
    rng = np.random.default_rng(4)
    sibling, tsd = rng.normal(size=(2, 6, 4)).astype("float32"), rng.normal(size=(2, 6, 4)).astype("float32")
    labels = rng.integers(-1, 4, size=(2, 6)).astype("int32")
    fn = functools.partial(classification_progressive_constraint, classification_loss="eqlv2")
    np.testing.assert_allclose(run_compiled(fn, sibling, tsd, labels), _np(fn(sibling, tsd, labels)), rtol=1e-5)
    region, deltas = rng.normal(0, 0.5, (4, 2)).astype("float32"), rng.normal(0, 0.3, (4, 4)).astype("float32")
    zeros = np.zeros((4, 4), "float32")
    np.testing.assert_allclose(run_compiled(_localization, region, zeros, deltas),
                               _np(_localization(region, zeros, deltas)), rtol=1e-5)
