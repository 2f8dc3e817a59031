"""Argument checks shared by every layer, head and loss: each raises a ``ValueError`` that
names the argument, the value and what is allowed."""

import numbers


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
