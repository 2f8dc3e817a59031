"""The reliability tables' vocabulary: a ``Case`` is one bad input or fault, tried the way a
user would meet it, with what must happen: a clear error (``Raises``: the exception type and
a fragment of its message) or the correct result (``Handled``: a check of the value). A case
that touches saved state (checkpoints, exported models, files) also checks that nothing saved
was damaged. ``python -m tests.reliability.summary`` prints the counts by area."""

import dataclasses
import re
from typing import Callable

import pytest


@dataclasses.dataclass(frozen=True)
class Raises:
    """The case must raise ``error`` (a type or tuple of types) whose message contains ``fragment``
    (a regular expression, searched)."""

    error: object
    fragment: str


@dataclasses.dataclass(frozen=True)
class Handled:
    """The case must return a value for which ``check(value)`` passes (it asserts)."""

    check: Callable
    what: str


@dataclasses.dataclass(frozen=True)
class Case:
    """``run(tmp_path)`` performs the action; ``expect`` is a ``Raises`` or a ``Handled``."""

    id: str
    area: str
    run: Callable
    expect: object

    def param(self):
        return pytest.param(self, id=self.id)


def check_case(case, tmp_path):
    """Runs ``case`` and asserts its expectation."""
    if isinstance(case.expect, Raises):
        with pytest.raises(case.expect.error) as info:
            case.run(tmp_path)
        message = str(info.value)
        assert re.search(case.expect.fragment, message, re.DOTALL), (
            f"{case.id}: message does not contain {case.expect.fragment!r}:\n{message[:2000]}")
    else:
        case.expect.check(case.run(tmp_path))


def outcome(case):
    return "clear error" if isinstance(case.expect, Raises) else "handled correctly"
