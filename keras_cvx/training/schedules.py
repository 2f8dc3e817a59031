"""Learning-rate schedules with linear warm-up, as Keras ``LearningRateSchedule`` subclasses
(serializable, evaluated on ``optimizer.iterations``, so their state is the optimizer's
iteration counter and is saved with the optimizer's checkpoint).

- ``WarmupCosineDecay``: ``lr(t) = base * t / warmup`` for ``t < warmup``, then
  ``alpha_lr + (base - alpha_lr) * 0.5 * (1 + cos(pi * min(t - warmup, T) / T))`` with
  ``T = decay_steps - warmup`` and ``alpha_lr = alpha * base``.
- ``WarmupStepDecay``: the same warm-up, then ``base * factor ** k`` where ``k`` is the
  number of ``boundaries`` that ``t`` has reached (the "step" schedule of Detectron /
  TF Model Garden, e.g. ``factor=0.1`` at 2/3 and 8/9 of training).

The warm-up starts from ``warmup_start * base`` (0 by default).
"""

import math

import keras
from keras import ops

from keras_cvx.validation import require_positive, require_unit_interval


def _check_warmup(warmup_steps):
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"`warmup_steps` must be a non-negative integer, got {warmup_steps!r}.")
    return warmup_steps


def _warmup(step, base, warmup_steps, warmup_start, after):
    if warmup_steps == 0:
        return after
    fraction = ops.minimum(step / warmup_steps, 1.0)
    warm = base * (warmup_start + (1.0 - warmup_start) * fraction)
    return ops.where(step < warmup_steps, warm, after)


@keras.saving.register_keras_serializable(package="keras_cvx")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up then cosine decay to ``alpha * base_learning_rate`` at ``decay_steps``."""

    def __init__(self, base_learning_rate, decay_steps, warmup_steps=0, alpha=0.0, warmup_start=0.0):
        self.base_learning_rate = require_positive("base_learning_rate", base_learning_rate)
        if isinstance(decay_steps, bool) or not isinstance(decay_steps, int) or decay_steps <= warmup_steps:
            raise ValueError(
                f"`decay_steps` must be an integer larger than `warmup_steps` ({warmup_steps!r}), "
                f"got {decay_steps!r}."
            )
        self.decay_steps = decay_steps
        self.warmup_steps = _check_warmup(warmup_steps)
        self.alpha = require_unit_interval("alpha", alpha, include_one=True)
        self.warmup_start = require_unit_interval("warmup_start", warmup_start)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        base = self.base_learning_rate
        span = float(self.decay_steps - self.warmup_steps)
        progress = ops.clip(step - self.warmup_steps, 0.0, span) / span
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        decayed = base * (self.alpha + (1.0 - self.alpha) * cosine)
        return _warmup(step, base, self.warmup_steps, self.warmup_start, decayed)

    def get_config(self):
        return {
            "base_learning_rate": self.base_learning_rate,
            "decay_steps": self.decay_steps,
            "warmup_steps": self.warmup_steps,
            "alpha": self.alpha,
            "warmup_start": self.warmup_start,
        }


@keras.saving.register_keras_serializable(package="keras_cvx")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up then ``base_learning_rate * factor ** (number of boundaries reached)``."""

    def __init__(self, base_learning_rate, boundaries, factor=0.1, warmup_steps=0, warmup_start=0.0):
        self.base_learning_rate = require_positive("base_learning_rate", base_learning_rate)
        boundaries = list(boundaries)
        if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in boundaries) or (
            boundaries != sorted(set(boundaries))
        ):
            raise ValueError(
                f"`boundaries` must be strictly increasing positive integers, got {boundaries!r}."
            )
        self.boundaries = boundaries
        self.factor = require_positive("factor", factor)
        self.warmup_steps = _check_warmup(warmup_steps)
        self.warmup_start = require_unit_interval("warmup_start", warmup_start)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        reached = sum(ops.cast(step >= b, "float32") for b in self.boundaries) if self.boundaries else 0.0
        decayed = self.base_learning_rate * ops.power(self.factor, reached)
        return _warmup(step, self.base_learning_rate, self.warmup_steps, self.warmup_start, decayed)

    def get_config(self):
        return {
            "base_learning_rate": self.base_learning_rate,
            "boundaries": list(self.boundaries),
            "factor": self.factor,
            "warmup_steps": self.warmup_steps,
            "warmup_start": self.warmup_start,
        }
