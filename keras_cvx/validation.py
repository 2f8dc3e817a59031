"""Argument checks shared by every layer, head and loss: each raises a ``ValueError`` that
names the argument, the value and what is allowed."""

import numbers

import numpy as np


def require_positive_int(name, value):
    """``value`` as a Python int; Python and NumPy integers >= 1 are accepted."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return int(value)


def require_positive(name, value):
    """``value`` as a Python float; Python and NumPy numbers > 0 are accepted."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
    return float(value)


def require_unit_interval(name, value, include_one=False):
    """``value`` as a Python float in [0, 1) (or [0, 1] with ``include_one``)."""
    number = not isinstance(value, bool) and isinstance(value, numbers.Real)
    if not number or not (0 <= value and (value <= 1 if include_one else value < 1)):
        bounds = "[0, 1]" if include_one else "[0, 1)"
        raise ValueError(f"`{name}` must be a number in {bounds}, got {value!r}.")
    return float(value)


def require_choice(name, value, choices):
    """``value`` when it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {sorted(choices)}, got {value!r}.")
    return value


# The one label value that marks a padding row (an absent instance or RoI) everywhere in the
# package: targets, losses, predictions. No other negative label is accepted.
PADDING_LABEL = -1


def concrete_values(tensor):
    """``tensor`` as a NumPy array when its values are known now (NumPy, eager TensorFlow, JAX
    outside ``jit``), ``None`` while tracing (``tf.function``, XLA, ``jax.jit``): checks on
    values run in eager mode and are skipped inside compiled code."""
    try:
        return np.asarray(tensor)
    except (TypeError, RuntimeError):  # JAX tracers raise a TypeError, symbolic TF tensors a RuntimeError subclass
        return None


def check_labels(labels, num_classes, name="labels", background=False):
    """Raises a ``ValueError`` naming ``name`` when a concrete label is not a class id in
    ``[0, num_classes)``, ``PADDING_LABEL`` or (with ``background``) ``num_classes``; does
    nothing while tracing (see ``concrete_values``). Returns ``labels``."""
    values = concrete_values(labels)
    if values is None or values.size == 0:
        return labels
    if not np.issubdtype(values.dtype, np.integer):
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            raise ValueError(f"`{name}` must hold integer class ids, got non-integer values (dtype {values.dtype}).")
    highest = num_classes if background else num_classes - 1
    bad = (values != PADDING_LABEL) & ((values < 0) | (values > highest))
    if np.any(bad):
        position = tuple(int(i) for i in np.argwhere(bad)[0])
        allowed = f"0..{highest}" + (f" ({num_classes} = background)" if background else "")
        raise ValueError(
            f"`{name}` holds {int(values[position])} at index {position} ({int(bad.sum())} bad value(s)): class ids "
            f"must be {allowed} for num_classes={num_classes}, or {PADDING_LABEL} for padding."
        )
    return labels
