"""Tests for keras_cvx.losses.dice: CondInst's per-instance dice loss (arXiv 2003.05664 Sec. 3.3,
V-Net eq. 1 with ε = 1e-5) against NumPy, with logits, the mean over instances and the harness."""

import numpy as np
import pytest
from keras import ops

from keras_cvx.losses.dice import DiceLoss, dice_loss
from tests.test_case import run_loss_test


def numpy_dice(g, p, eps=1e-5):
    g, p = np.asarray(g, np.float64), np.asarray(p, np.float64)
    return 1 - 2 * (p * g).sum((-2, -1)) / ((p ** 2).sum((-2, -1)) + (g ** 2).sum((-2, -1)) + eps)


def test_matches_numpy_and_harness():
    rng = np.random.default_rng(0)
    targets = (rng.uniform(size=(3, 5, 6)) > 0.5).astype("float32")
    probabilities = rng.uniform(size=(3, 5, 6)).astype("float32")
    expected = numpy_dice(targets, probabilities)
    np.testing.assert_allclose(ops.convert_to_numpy(dice_loss(targets, probabilities)), expected, rtol=1e-5)
    run_loss_test(DiceLoss, {}, targets, probabilities, expected_value=expected.mean(), tolerance=1e-5)
    logits = rng.normal(size=(3, 5, 6)).astype("float32")
    np.testing.assert_allclose(float(DiceLoss(from_logits=True)(targets, logits)),
                               numpy_dice(targets, 1 / (1 + np.exp(-logits))).mean(), rtol=1e-5)


def test_defaults_edge_cases_and_axis():
    loss = DiceLoss()
    assert (loss.from_logits, loss.epsilon, loss.axis) == (False, 1e-5, (-2, -1))
    empty = np.zeros((1, 4, 4), "float32")
    assert float(loss(empty, empty)) == pytest.approx(1.0)  # 1 - 0 / ε
    full = np.ones((1, 4, 4), "float32")
    assert float(loss(full, full)) == pytest.approx(1 - 32 / (32 + 1e-5), abs=1e-7)
    flat = np.ones((2, 8), "float32")
    assert ops.convert_to_numpy(dice_loss(flat, flat, axis=-1)).shape == (2,)
    with pytest.raises(ValueError, match="epsilon"):
        DiceLoss(epsilon=0)
