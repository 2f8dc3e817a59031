import pathlib
import runpy

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "train_distillation.py"
TINY = ["--epochs", "1", "--teacher-epochs", "1", "--train-images", "256", "--test-size", "100", "--batch-size", "64", "--verbose", "0"]


def test_tiny_run_prints_the_table_of_the_four_runs(capsys):
    example = runpy.run_path(str(EXAMPLE))
    rows = example["main"](TINY)
    assert [row["method"] for row in rows] == ["teacher (reference)", "labels only", "labels + KD", "labels + top-K KD"]
    for row in rows:
        assert 0.0 <= row["top1"] <= 1.0 and row["seconds"] > 0
    printed = capsys.readouterr().out
    assert "top-1" in printed and all(row["method"] in printed for row in rows)
    assert f"{rows[-1]['top1']:.4f}" in printed


def test_autoaugment_option_runs():
    example = runpy.run_path(str(EXAMPLE))
    rows = example["main"](TINY + ["--augment", "autoaugment", "--policy", "v0", "--train-images", "128", "--top-k", "5"])
    assert len(rows) == 4 and all(0.0 <= row["top1"] <= 1.0 for row in rows)
