import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.losses.multibox import MultiBoxLoss, hard_negative_mask
from tests.ops.compiled import run_compiled
from tests.test_case import run_loss_test


def numpy_multibox(box_targets, class_targets, box_regression, logits, ratio=3.0, alpha=1.0):
    """Spec §7 with a loop per image: per-image (L_conf + α L_loc) / max(total positives, 1)."""
    num_anchors = logits.shape[1]
    total_positives = int((class_targets > 0).sum())
    values = []
    for targets, deltas, labels, z in zip(box_targets, box_regression, class_targets, logits):
        shifted = z - z.max(-1, keepdims=True)
        log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        positives = [j for j in range(num_anchors) if labels[j] > 0]
        candidates = [j for j in range(num_anchors) if labels[j] == 0]
        candidates.sort(key=lambda j: log_softmax[j, 0])  # largest background loss first
        mined = candidates[: min(int(ratio * len(positives)), num_anchors - 1)]
        confidence = -sum(log_softmax[j, labels[j]] for j in positives) - sum(log_softmax[j, 0] for j in mined)
        localization = 0.0
        for j in positives:
            for d in np.abs(deltas[j] - targets[j]):
                localization += 0.5 * d * d if d < 1 else d - 0.5
        values.append((confidence + alpha * localization) / max(total_positives, 1))
    return np.array(values)


def _batch(seed, batch=3, priors=20, classes=4, probabilities=(0.25, 0.55, 0.2)):
    """Random predictions and targets; ``probabilities`` of (ignore, background, object)."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, size=(batch, priors), p=probabilities)
    labels = np.where(kind == 2, rng.integers(1, classes, size=(batch, priors)), kind - 1)
    return {
        "box_targets": rng.normal(size=(batch, priors, 4)).astype("float32"),
        "class_targets": labels.astype("int32"),
    }, {
        "box_regression": rng.normal(scale=1.5, size=(batch, priors, 4)).astype("float32"),
        "class_logits": rng.normal(scale=2.0, size=(batch, priors, classes)).astype("float32"),
    }


def _reference(y_true, y_pred, **kwargs):
    return numpy_multibox(
        y_true["box_targets"].astype(np.float64),
        y_true["class_targets"],
        y_pred["box_regression"].astype(np.float64),
        y_pred["class_logits"].astype(np.float64),
        **kwargs,
    )


def _packed(y_true, y_pred):
    true = np.concatenate([y_true["box_targets"], y_true["class_targets"][..., None].astype("float32")], -1)
    return true, np.concatenate([y_pred["box_regression"], y_pred["class_logits"]], -1)


def _per_image(loss, y_true, y_pred):
    return ops.convert_to_numpy(loss.call(y_true, y_pred))


def test_harness_on_packed_tensors():
    y_true, y_pred = _batch(0)
    assert (y_true["class_targets"] == -1).any() and (y_true["class_targets"] > 0).any()
    run_loss_test(
        MultiBoxLoss,
        {"negative_positive_ratio": 3.0, "localization_weight": 1.0},
        *_packed(y_true, y_pred),
        expected_value=_reference(y_true, y_pred).sum(),
    )


@pytest.mark.parametrize(
    "seed, ratio, alpha, probabilities",
    [
        (1, 3.0, 1.0, (0.25, 0.55, 0.2)),
        (2, 1.5, 0.5, (0.1, 0.7, 0.2)),  # fractional r: ⌊1.5 · num_pos⌋ negatives
        (3, 3.0, 2.0, (0.1, 0.2, 0.7)),  # fewer candidates than 3 · num_pos: all are mined
        (4, 3.0, 1.0, (0.0, 0.9, 0.1)),  # 3 · num_pos can exceed N − 1
        (5, 3.0, 1.0, (0.0, 0.6, 0.4)),
    ],
)
def test_matches_numpy_per_image(seed, ratio, alpha, probabilities):
    y_true, y_pred = _batch(seed, batch=4, priors=9, classes=3, probabilities=probabilities)
    loss = MultiBoxLoss(negative_positive_ratio=ratio, localization_weight=alpha)
    expected = _reference(y_true, y_pred, ratio=ratio, alpha=alpha)
    np.testing.assert_allclose(_per_image(loss, y_true, y_pred), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss(y_true, y_pred)), expected.sum(), rtol=1e-5)


def test_cap_at_num_anchors_minus_one():
    """One image, N = 4, 2 positives: min(6, N − 1) = 3 negatives, but only 2 candidates."""
    labels = np.array([[1, 2, 0, 0]], "int32")
    logits = np.zeros((1, 4, 3), "float32")
    y_true = {"box_targets": np.zeros((1, 4, 4), "float32"), "class_targets": labels}
    y_pred = {"box_regression": np.zeros((1, 4, 4), "float32"), "class_logits": logits}
    # every prior has CE ln 3; 2 positives + 2 mined negatives, divided by 2 positives
    np.testing.assert_allclose(float(MultiBoxLoss()(y_true, y_pred)), 4 * np.log(3) / 2, rtol=1e-6)


def test_dict_and_packed_inputs_agree():
    y_true, y_pred = _batch(6)
    loss = MultiBoxLoss()
    np.testing.assert_allclose(float(loss(y_true, y_pred)), float(loss(*_packed(y_true, y_pred))), rtol=1e-6)


def _gradient(loss, y_true, y_pred):
    """d loss / d (box_regression, class_logits) with the active backend's autodiff."""
    def value(deltas, logits):
        return loss(y_true, {"box_regression": deltas, "class_logits": logits})

    if keras.backend.backend() == "jax":
        import jax

        grads = jax.grad(value, argnums=(0, 1))(y_pred["box_regression"], y_pred["class_logits"])
    else:
        import tensorflow as tf

        inputs = [tf.constant(y_pred["box_regression"]), tf.constant(y_pred["class_logits"])]
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            result = value(*inputs)
        grads = tape.gradient(result, inputs)
    return [np.asarray(ops.convert_to_numpy(g)) for g in grads]


def test_no_positives_gives_zero_and_finite_zero_gradients():
    y_true, y_pred = _batch(7, probabilities=(0.3, 0.7, 0.0))
    y_true["box_targets"][:] = np.inf  # targets of non-positives are never used
    loss = MultiBoxLoss()
    assert float(loss(y_true, y_pred)) == 0.0
    for g in _gradient(loss, y_true, y_pred):
        assert np.all(np.isfinite(g)) and not g.any()


def test_gradients_are_finite_and_touch_only_used_priors():
    y_true, y_pred = _batch(8)
    y_true["box_targets"][y_true["class_targets"] <= 0] = np.nan
    loss = MultiBoxLoss()
    box_grad, logit_grad = _gradient(loss, y_true, y_pred)
    assert np.all(np.isfinite(box_grad)) and np.all(np.isfinite(logit_grad))
    positives = y_true["class_targets"] > 0
    assert not box_grad[~positives].any() and box_grad[positives].any()
    assert not logit_grad[y_true["class_targets"] == -1].any()


def test_ignored_priors_are_never_mined():
    """Ignored priors with the largest background loss change nothing: equal to dropping them."""
    y_true, y_pred = _batch(9, batch=2, priors=16, probabilities=(0.0, 0.8, 0.2))
    ignored = np.zeros((2, 16), bool)
    ignored[:, -4:] = True
    y_true["class_targets"][ignored] = -1
    y_pred["class_logits"][..., -4:, 0] = -50.0  # background loss ≈ 50: the first to be mined
    loss = MultiBoxLoss()
    kept_true = {k: v[:, :12] for k, v in y_true.items()}
    kept_pred = {k: v[:, :12] for k, v in y_pred.items()}
    np.testing.assert_allclose(_per_image(loss, y_true, y_pred), _per_image(loss, kept_true, kept_pred), rtol=1e-6)

    background_loss = -y_pred["class_logits"][..., 0]
    mask = ops.convert_to_numpy(hard_negative_mask(background_loss, y_true["class_targets"] == 0, np.array([16, 3])))
    assert not mask[ignored].any()
    assert mask[0].sum() == (y_true["class_targets"][0] == 0).sum() and mask[1].sum() == 3


def test_compiled_equals_eager():
    y_true, y_pred = _batch(10, batch=2, priors=50, classes=5)
    loss = MultiBoxLoss(negative_positive_ratio=2.0)

    def per_image(box_targets, class_targets, box_regression, class_logits):
        return loss.call(
            {"box_targets": box_targets, "class_targets": class_targets},
            {"box_regression": box_regression, "class_logits": class_logits},
        )

    arrays = (y_true["box_targets"], y_true["class_targets"], y_pred["box_regression"], y_pred["class_logits"])
    compiled = run_compiled(per_image, *arrays)
    np.testing.assert_allclose(compiled, _per_image(loss, y_true, y_pred), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(compiled, _reference(y_true, y_pred, ratio=2.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_predictions_give_float32(dtype):
    y_true, y_pred = _batch(11)
    low = {k: ops.cast(v, dtype) for k, v in y_pred.items()}
    value = MultiBoxLoss()(y_true, low)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    rounded = {k: np.asarray(ops.convert_to_numpy(ops.cast(v, "float32"))) for k, v in low.items()}
    np.testing.assert_allclose(float(value), _reference(y_true, rounded).sum(), rtol=1e-5)


def test_sample_weight_weighs_images():
    y_true, y_pred = _batch(12)
    weights = np.array([1.0, 0.0, 2.0], "float32")
    value = float(MultiBoxLoss()(y_true, y_pred, sample_weight=weights))
    np.testing.assert_allclose(value, (_reference(y_true, y_pred) * weights).sum(), rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"negative_positive_ratio": 0}, "negative_positive_ratio"),
        ({"localization_weight": -1.0}, "localization_weight"),
        ({"reduction": "median"}, "reduction"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        MultiBoxLoss(**kwargs)
