"""Argument checks shared by every layer, head and loss: each raises a ``ValueError`` that
names the argument, the value and what is allowed."""


def require_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return value


def require_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
    return float(value)


def require_unit_interval(name, value, include_one=False):
    upper_ok = value <= 1 if include_one else value < 1
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value and upper_ok):
        bounds = "[0, 1]" if include_one else "[0, 1)"
        raise ValueError(f"`{name}` must be a number in {bounds}, got {value!r}.")
    return float(value)


def require_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {sorted(choices)}, got {value!r}.")
    return value
