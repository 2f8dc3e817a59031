"""Tests for keras_cvx.training.schedules against hand-computed values and a NumPy formula."""

import math

import keras
import numpy as np
import pytest

from keras_cvx.training.schedules import WarmupCosineDecay, WarmupStepDecay


def _values(schedule, steps):
    return np.array([float(keras.ops.convert_to_numpy(schedule(s))) for s in steps])


def test_warmup_cosine_matches_numpy():
    schedule = WarmupCosineDecay(0.1, decay_steps=110, warmup_steps=10, alpha=0.01)
    steps = np.arange(0, 130, 7)
    progress = np.clip(steps - 10, 0, 100) / 100
    cosine = 0.1 * (0.01 + 0.99 * 0.5 * (1 + np.cos(math.pi * progress)))
    reference = np.where(steps < 10, 0.1 * steps / 10, cosine)
    np.testing.assert_allclose(_values(schedule, steps), reference, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(_values(schedule, [5, 10, 60, 110, 500]), [0.05, 0.1, 0.05 + 0.0005, 0.001, 0.001],
                               rtol=1e-5)


def test_warmup_step_decay_and_warmup_start():
    schedule = WarmupStepDecay(0.2, boundaries=[20, 30], factor=0.1, warmup_steps=4, warmup_start=0.5)
    np.testing.assert_allclose(
        _values(schedule, [0, 2, 4, 19, 20, 29, 30, 100]), [0.1, 0.15, 0.2, 0.2, 0.02, 0.02, 0.002, 0.002], rtol=1e-5
    )
    constant = WarmupStepDecay(0.3, boundaries=[])
    np.testing.assert_allclose(_values(constant, [0, 1000]), [0.3, 0.3], rtol=1e-6)


@pytest.mark.parametrize(
    "schedule",
    [WarmupCosineDecay(0.1, 50, warmup_steps=5, alpha=0.1), WarmupStepDecay(0.1, [10, 20], 0.5, warmup_steps=3)],
)
def test_serialization_round_trip_and_optimizer(schedule):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert type(restored) is type(schedule) and restored.get_config() == schedule.get_config()
    np.testing.assert_allclose(_values(restored, range(0, 60, 3)), _values(schedule, range(0, 60, 3)))
    optimizer = keras.optimizers.SGD(schedule)
    config = keras.optimizers.serialize(optimizer)
    rebuilt = keras.optimizers.deserialize(config)
    assert rebuilt.learning_rate is not None
    assert float(keras.ops.convert_to_numpy(rebuilt.learning_rate)) == pytest.approx(float(schedule(0)))


def test_argument_errors():
    with pytest.raises(ValueError, match="decay_steps"):
        WarmupCosineDecay(0.1, decay_steps=10, warmup_steps=10)
    with pytest.raises(ValueError, match="base_learning_rate"):
        WarmupCosineDecay(0.0, decay_steps=10)
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupStepDecay(0.1, [5], warmup_steps=-1)
    with pytest.raises(ValueError, match="boundaries"):
        WarmupStepDecay(0.1, [5, 3])
    with pytest.raises(ValueError, match="alpha"):
        WarmupCosineDecay(0.1, 10, alpha=2.0)
