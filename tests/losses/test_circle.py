import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.losses.circle import CircleLoss, PairwiseCircleLoss
from tests.test_case import run_loss_test


def numpy_pairwise_circle(embeddings, labels, margin, gamma):
    """Per-anchor loss with explicit Python loops over pairs (spec §3, §5)."""
    u = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    s = u @ u.T
    losses = []
    for a in range(len(labels)):
        pos = [s[a, b] for b in range(len(labels)) if b != a and labels[b] == labels[a]]
        neg = [s[a, b] for b in range(len(labels)) if labels[b] != labels[a]]
        if not pos or not neg:
            continue
        total = 0.0
        for sp in pos:
            for sn in neg:
                total += np.exp(gamma * max(sn + margin, 0) * (sn - margin) - gamma * max(1 + margin - sp, 0) * (sp - 1 + margin))
        losses.append(np.log1p(total))
    return np.mean(losses) if losses else 0.0


def spec_points():
    angles = np.deg2rad([0, 20, 40, 60, 80])
    return np.stack([np.cos(angles), np.sin(angles)], axis=1).astype("float32"), np.array([0, 0, 1, 1, 2])


@pytest.mark.parametrize("gamma, margin, expected", [(256, 0.25, 176.028075), (80, 0.25, 55.008773), (80, 0.4, 39.408773)])
def test_pairwise_spec_values_through_harness(gamma, margin, expected):
    x, y = spec_points()
    value = run_loss_test(PairwiseCircleLoss, {"gamma": gamma, "margin": margin}, y, x, expected_value=expected, tolerance=2e-4)
    np.testing.assert_allclose(value, numpy_pairwise_circle(x.astype(np.float64), y, margin, gamma), rtol=1e-5)


def test_class_level_spec_value_through_harness():
    x = np.array([[1.0, 0.5, -0.2], [0.1, 0.9, 0.3]])
    w = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=np.float64)
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    np.testing.assert_allclose(cos[0], [0.880451, 0.440225, -0.176090, 0.660827], atol=1e-6)
    run_loss_test(CircleLoss, {"margin": 0.25, "gamma": 256}, np.array([0, 1]), cos.astype("float32"), expected_value=105.373350, tolerance=2e-4)


def test_class_level_is_cross_entropy_of_margin_logits():
    """Spec §4: CE over logits Y γ α_p (s − (1 − m)) + (1 − Y) γ α_n (s − m), batch mean."""
    rng = np.random.default_rng(0)
    cos = rng.uniform(-1, 1, size=(6, 5)).astype("float32")
    y = rng.integers(0, 5, size=6)
    m, g = 0.3, 32.0
    onehot = np.eye(5)[y]
    logits = onehot * g * np.maximum(1 + m - cos, 0) * (cos - 1 + m) + (1 - onehot) * g * np.maximum(cos + m, 0) * (cos - m)
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits.astype("float32"))
    value = CircleLoss(margin=m, gamma=g)(y, cos)
    np.testing.assert_allclose(ops.convert_to_numpy(value), ops.convert_to_numpy(expected), rtol=1e-5)


def test_class_level_ignores_out_of_range_labels():
    cos = np.random.default_rng(1).uniform(-1, 1, size=(3, 4)).astype("float32")
    full = CircleLoss(gamma=16.0)(np.array([2, -1, 1]), cos)
    valid = CircleLoss(gamma=16.0)(np.array([2, 1]), cos[[0, 2]])
    np.testing.assert_allclose(ops.convert_to_numpy(full), ops.convert_to_numpy(valid), rtol=1e-6)


def test_pairwise_agrees_with_keras_circle_on_unit_vectors():
    """Where the definitions coincide (unit-norm inputs, every valid row's loss > 0), the
    values are equal; gradients differ because Keras does not detach α."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(12, 8)).astype("float32")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 5])  # classes 4 and 5 have no positives
    ours = PairwiseCircleLoss(margin=0.25, gamma=64.0)
    theirs = keras.losses.Circle(gamma=64.0, margin=0.25)
    np.testing.assert_allclose(ops.convert_to_numpy(ours(y, x)), ops.convert_to_numpy(theirs(y, x)), rtol=1e-5)
    np.testing.assert_allclose(
        ops.convert_to_numpy(ours(y, x)), numpy_pairwise_circle(x.astype(np.float64), y, 0.25, 64.0), rtol=1e-5
    )
    grad_ours, grad_theirs = _gradient(ours, y, x), _gradient(theirs, y, x)
    assert np.all(np.isfinite(grad_ours))
    assert np.abs(grad_ours - grad_theirs).max() > 1e-3


def _gradient(loss, y, x):
    if keras.backend.backend() == "jax":
        import jax

        return np.asarray(jax.grad(lambda e: loss(y, e))(x))
    import tensorflow as tf

    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = loss(y, x)
    return tape.gradient(value, x).numpy()


def test_pairwise_detached_alpha_gradient_matches_closed_form():
    """dL/ds_n = Z softmax(logit_n) γ α_n and dL/ds_p = −Z softmax(logit_p) γ α_p (spec §3)."""
    x, y = spec_points()
    m, g = 0.25, 8.0
    grad = _gradient(PairwiseCircleLoss(margin=m, gamma=g), y, x)
    u = x.astype(np.float64)
    s = u @ u.T
    expected = np.zeros_like(u)
    valid = [0, 1, 2, 3]
    for a in valid:
        pos = [b for b in range(5) if b != a and y[b] == y[a]]
        neg = [b for b in range(5) if y[b] != y[a]]
        lp = np.array([-g * max(1 + m - s[a, b], 0) * (s[a, b] - 1 + m) for b in pos])
        ln = np.array([g * max(s[a, b] + m, 0) * (s[a, b] - m) for b in neg])
        lse = np.log(np.exp(lp).sum()) + np.log(np.exp(ln).sum())
        z = 1 / (1 + np.exp(-lse))
        ds = np.zeros(5)
        ds[pos] = -z * np.exp(lp) / np.exp(lp).sum() * g * np.maximum(1 + m - s[a, pos], 0)
        ds[neg] = z * np.exp(ln) / np.exp(ln).sum() * g * np.maximum(s[a, neg] + m, 0)
        # s_ab = u_a·u_b: contributes to both u_a and u_b; unit-norm inputs, so project out
        for b in range(5):
            expected[a] += ds[b] * u[b] / len(valid)
            expected[b] += ds[b] * u[a] / len(valid)
    # the normalisation's Jacobian at unit vectors removes the radial component
    expected -= np.sum(expected * u, axis=1, keepdims=True) * u
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


def test_gamma_300_on_180_points_has_finite_gradients():
    angles = np.deg2rad(np.arange(180, dtype=np.float64) * 2.0)
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype("float32")
    y = np.arange(180) // 4
    loss = PairwiseCircleLoss(margin=0.25, gamma=300.0)
    value = float(ops.convert_to_numpy(loss(y, x)))
    assert np.isfinite(value) and value > 0
    assert np.all(np.isfinite(_gradient(loss, y, x)))


@pytest.mark.parametrize("labels", [np.arange(6), np.zeros(6, "int32")])
def test_no_positive_or_no_negative_pairs_give_zero_and_zero_gradient(labels):
    x = np.random.default_rng(3).normal(size=(6, 4)).astype("float32")
    loss = PairwiseCircleLoss()
    assert float(ops.convert_to_numpy(loss(labels, x))) == 0.0
    np.testing.assert_array_equal(_gradient(loss, labels, x), 0.0)


def test_single_embedding_gives_zero():
    assert float(ops.convert_to_numpy(PairwiseCircleLoss()(np.array([3]), np.ones((1, 5), "float32")))) == 0.0


def test_mixed_float16_inputs_computed_in_float32():
    x, y = spec_points()
    keras.config.set_dtype_policy("mixed_float16")
    value = PairwiseCircleLoss(gamma=256, margin=0.25)(y, ops.cast(x, "float16"))
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    np.testing.assert_allclose(float(ops.convert_to_numpy(value)), 176.028075, rtol=2e-3)
    assert np.all(np.isfinite(_gradient(PairwiseCircleLoss(gamma=256), y, x.astype("float16"))))


def test_pairwise_normalizes_embeddings():
    x, y = spec_points()
    a = PairwiseCircleLoss(gamma=80, margin=0.25)(y, 3.0 * x)
    np.testing.assert_allclose(float(ops.convert_to_numpy(a)), 55.008773, rtol=1e-5)


@pytest.mark.parametrize("cls", [CircleLoss, PairwiseCircleLoss])
@pytest.mark.parametrize("kwargs, argument", [({"gamma": 0}, "gamma"), ({"margin": 1.5}, "margin")])
def test_bad_arguments_name_the_argument(cls, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        cls(**kwargs)
