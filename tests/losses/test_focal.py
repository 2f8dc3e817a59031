"""Tests for keras_cvx.losses.focal: the α-balanced sigmoid focal loss (arXiv 1708.02002 eq. 5)
against NumPy, against Keras's BinaryFocalCrossentropy where Keras is exact, and for large
logits where Keras's probability clipping saturates; the shared loss harness."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.losses.focal import SigmoidFocalLoss, sigmoid_focal_loss
from tests.test_case import run_loss_test


def numpy_focal(y, x, alpha=0.25, gamma=2.0):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    p = 1 / (1 + np.exp(-x))
    ce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    p_t = p * y + (1 - p) * (1 - y)
    return (alpha * y + (1 - alpha) * (1 - y)) * (1 - p_t) ** gamma * ce


def test_paper_defaults_and_numpy():
    loss = SigmoidFocalLoss()
    assert (loss.alpha, loss.gamma, loss.reduction) == (0.25, 2.0, "sum")
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4, 6)).astype("float32")
    targets = (rng.uniform(size=(4, 6)) > 0.7).astype("float32")
    run_loss_test(SigmoidFocalLoss, {}, targets, logits, expected_value=numpy_focal(targets, logits).sum(),
                  tolerance=1e-4)
    np.testing.assert_allclose(ops.convert_to_numpy(sigmoid_focal_loss(targets, logits, alpha=None, gamma=0.0)),
                               numpy_focal(targets, logits, 0.5, 0.0) * 2, rtol=1e-5)


def test_equals_keras_focal_where_keras_is_exact_and_stays_finite_beyond():
    rng = np.random.default_rng(1)
    logits = rng.uniform(-8, 8, (3, 5)).astype("float32")
    targets = (rng.uniform(size=(3, 5)) > 0.5).astype("float32")
    keras_loss = keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=0.25, gamma=2.0,
                                                      from_logits=True, reduction="sum")
    # Keras averages over the last axis
    np.testing.assert_allclose(float(SigmoidFocalLoss()(targets, logits)),
                               float(keras_loss(targets, logits)) * 5, rtol=1e-4)
    # a positive with logit -30: the loss keeps growing (Keras clips p at 1e-7: 16.1 at most)
    value = float(SigmoidFocalLoss(alpha=None, gamma=0.0)(np.array([[1.0]]), np.array([[-30.0]], "float32")))
    np.testing.assert_allclose(value, 30.0, rtol=1e-5)


def test_argument_checks():
    with pytest.raises(ValueError, match="alpha"):
        SigmoidFocalLoss(alpha=1.5)
    with pytest.raises(ValueError, match="gamma"):
        SigmoidFocalLoss(gamma=-1)
