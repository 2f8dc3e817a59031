import pathlib
import runpy

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "train_embeddings.py"


def test_tiny_run_prints_recall_of_the_three_losses(capsys):
    example = runpy.run_path(str(EXAMPLE))
    rows = example["main"](["--epochs", "1", "--train-images", "512", "--test-size", "100", "--batch-size", "64", "--verbose", "0"])
    assert [row["loss"] for row in rows] == ["softmax", "class-level circle", "pair-wise circle"]
    for row in rows:
        # 10 balanced classes: chance is ~0.1; even one epoch of any of the losses is far above it.
        assert 0.2 < row["recall@1"] <= 1.0 and row["seconds"] > 0
    printed = capsys.readouterr().out
    assert "recall@1" in printed and all(row["loss"] in printed for row in rows)
