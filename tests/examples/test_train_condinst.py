"""The example path of ``examples/train_condinst.py`` at test size: synthetic shapes with
masks -> Trainer -> COCOEvaluator (bbox and segm) -> PNGs (validation and the coins
photograph). The SavedModel export is skipped (``--export-dir ''``): tracing CondInst's two
serving signatures takes ~40 s on 2 cores, and ``tests/models/test_condinst.py`` exports and
reloads the same model class."""

import os

import numpy as np
import pytest
from PIL import Image

from tests.examples import loading

STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def load_example():
    return loading.load_example("train_condinst")


def test_train_evaluate_draw_export(tmp_path, capsys):
    example = load_example()
    results = example.main([
        "--steps", "2", "--batch-size", "2", "--image-size", "64", "--width", "0.125", "--fpn-channels", "8",
        "--head-convs", "1", "--groups", "4", "--mask-branch-channels", "8", "--max-proposals", "32",
        "--no-jit-compile",  # XLA compiles CondInst's step for about a minute here; tested in tests/models
        "--synthetic-dir", str(tmp_path / "shapes"), "--synthetic-train-images", "4", "--synthetic-val-images", "2",
        "--export-dir", "", "--png", str(tmp_path / "predictions.png"),
        "--coins-png", str(tmp_path / "coins.png"), "--model-dir", str(tmp_path / "run"), "--verbose", "0",
    ])
    printed = capsys.readouterr().out
    for prefix in ("bbox", "segm", "coins/bbox", "coins/segm"):
        for name in STATS:
            assert -1.0 <= results[f"{prefix}/{name}"] <= 1.0, (prefix, name)
    assert "segm" in printed and "coins" in printed
    picture = np.asarray(Image.open(tmp_path / "predictions.png"))
    assert picture.shape == (64, 2 * 64, 3)  # the first validation batch (2 images) side by side
    assert np.asarray(Image.open(tmp_path / "coins.png")).shape == (64, 64, 3)
    assert os.path.exists(tmp_path / "run" / "checkpoint")
    assert "exported" not in printed  # --export-dir ''


def test_real_data_flags_are_checked(capsys):
    example = load_example()
    for argv in (["--train-json", "a.json"], ["--train-tfrecord", "b-*", "--val-json", "v.json"],
                 ["--image-size", "100"], ["--fpn-channels", "16", "--head-channels", "32"]):
        with pytest.raises(SystemExit):
            example.parse_args(argv)
    assert "error" in capsys.readouterr().err
    args = example.parse_args(["--train-tfrecord", "b-*", "--val-json", "v.json", "--val-images", "d"])
    assert (args.backbone, args.width, args.image_size, args.max_instances) == ("resnet10", 0.25, 128, 16)
    model = example.build_condinst(example.parse_args(["--image-size", "64", "--width", "0.125", "--fpn-channels",
                                                        "8", "--groups", "4", "--mask-branch-channels", "8"]), 3)
    assert model.width_multiplier == 0.125 and model.neck.channels == 8 and model.mask_branch.channels == 8
