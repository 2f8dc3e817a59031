import pytest

from keras_cvx.evaluation.results_table import format_table


def test_hand_written_table():
    rows = [{"method": "labels only", "top1": 0.6, "seconds": 22.84}, {"method": "KD", "top1": 0.72901, "seconds": 4.0}]
    columns = [("method", "method", ""), ("top1", "top-1", ".4f"), ("seconds", "wall time (s)", ".1f")]
    expected = "\n".join(
        [
            "method        top-1  wall time (s)",
            "labels only  0.6000           22.8",
            "KD           0.7290            4.0",
        ]
    )
    assert format_table(rows, columns) == expected


def test_no_rows_gives_the_header_and_bad_columns_raise():
    assert format_table([], [("a", "alpha", "")]) == "alpha"
    with pytest.raises(ValueError, match="columns"):
        format_table([{"a": 1}], [])
