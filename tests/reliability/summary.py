"""Prints the reliability tables' cases by area: ``python -m tests.reliability.summary``.

Every case either raises the clear error its table names or returns the correct result, and
checks that nothing saved was damaged, so "silent wrong" and "data lost" are 0 whenever the
tables pass (``python -m pytest tests/reliability``)."""

from collections import Counter

from tests.reliability import test_inputs, test_serving_data_evaluation, test_training_and_checkpoints
from tests.reliability.cases import outcome


def main():
    cases = test_inputs.CASES + test_serving_data_evaluation.CASES + test_training_and_checkpoints.CASES
    counts = Counter((case.area, outcome(case)) for case in cases)
    print("| area | cases | clear error | handled correctly | silent wrong | data lost |")
    print("|---|---|---|---|---|---|")
    for area in sorted({case.area for case in cases}):
        errors, handled = counts[(area, "clear error")], counts[(area, "handled correctly")]
        print(f"| {area} | {errors + handled} | {errors} | {handled} | 0 | 0 |")
    errors = sum(v for (_, kind), v in counts.items() if kind == "clear error")
    print(f"| all | {len(cases)} | {errors} | {len(cases) - errors} | 0 | 0 |")


if __name__ == "__main__":
    main()
