import pathlib
import runpy

import numpy as np

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "train_distillation.py"
TINY = ["--epochs", "1", "--teacher-epochs", "1", "--train-images", "128", "--test-size", "100", "--batch-size", "64", "--verbose", "0"]


def test_tiny_run_prints_the_table_of_the_four_runs(capsys):
    example = runpy.run_path(str(EXAMPLE))
    rows = example["main"](TINY + ["--augment", "autoaugment", "--policy", "v0", "--top-k", "5"])
    assert [row["method"] for row in rows] == ["teacher (reference)", "labels only", "labels + KD", "labels + top-K KD"]
    for row in rows:
        assert 0.0 <= row["top1"] <= 1.0 and row["seconds"] > 0
    printed = capsys.readouterr().out
    assert "top-1" in printed and all(row["method"] in printed for row in rows)
    assert f"{rows[-1]['top1']:.4f}" in printed


def test_default_rand_augment_stream_changes_images_and_keeps_labels():
    example = runpy.run_path(str(EXAMPLE))
    args = example["parse_args"](["--epochs", "1", "--teacher-epochs", "1", "--batch-size", "8"])
    assert args.augment == "randaugment" and (args.num_ops, args.magnitude) == (2, 9)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 28, 28, 1)).astype("uint8")
    labels = np.arange(8)
    stream = example["augmented_stream"](images, labels, example["make_augment"](args), args)
    (batch, batch_labels), = list(stream)
    assert batch.shape == (8, 28, 28, 1) and batch.dtype.name == "float32"
    order = np.asarray(batch_labels)
    assert sorted(order) == list(range(8))  # every image once per epoch, shuffled
    assert not np.array_equal(np.asarray(batch), images[order].astype("float32"))
