import numpy as np
import pytest

from keras_cvx.validation import require_choice, require_positive, require_positive_int, require_unit_interval


def test_valid_values_pass_through():
    assert require_positive_int("n", 3) == 3
    assert require_positive("x", 2) == 2.0
    assert require_unit_interval("p", 0.0) == 0.0
    assert require_unit_interval("p", 1, include_one=True) == 1.0
    assert require_choice("mode", "a", ("a", "b")) == "a"


def test_numpy_numbers_are_accepted_as_python_numbers():
    value = require_positive_int("n", np.int64(4))
    assert value == 4 and type(value) is int
    assert type(require_positive("x", np.float32(0.5))) is float
    assert require_unit_interval("p", np.float64(0.25)) == 0.25


@pytest.mark.parametrize(
    "check, args",
    [
        (require_positive_int, ("depth", 0)),
        (require_positive_int, ("depth", 2.5)),
        (require_positive_int, ("depth", True)),
        (require_positive, ("depth", 0.0)),
        (require_positive, ("depth", float("nan"))),
        (require_unit_interval, ("depth", 1.0)),
        (require_unit_interval, ("depth", -0.1)),
        (require_unit_interval, ("depth", "0.5")),
        (require_positive_int, ("depth", np.float32(2.0))),
        (require_choice, ("depth", "c", ("a", "b"))),
    ],
)
def test_errors_name_the_argument_and_the_value(check, args):
    with pytest.raises(ValueError, match=r"`depth`.*got"):
        check(*args)
