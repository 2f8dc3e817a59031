"""The example path of ``examples/train_pointins.py`` at test size: synthetic shapes with
masks -> Trainer -> COCOEvaluator (bbox and segm) -> PNGs (validation and the coins
photograph), on FCOS; the RetinaNet model of the flags is built and checked (its training,
prediction and export are tested in ``tests/models/test_pointins.py`` and
``tests/export/test_onnx.py``). The SavedModel export is skipped (``--export-dir ''``):
``tests/models/test_pointins.py`` exports and reloads the same model class."""

import numpy as np
import pytest
from PIL import Image

from tests.examples import loading
from tests.examples.test_train_condinst import STATS

TINY = ["--steps", "2", "--batch-size", "2", "--image-size", "64", "--width", "0.125", "--fpn-channels", "8",
        "--head-convs", "1", "--groups", "4", "--template-channels", "4", "--mask-head-channels", "8",
        "--max-proposals", "32", "--no-jit-compile", "--synthetic-train-images", "4", "--synthetic-val-images", "2",
        "--export-dir", "", "--verbose", "0"]


def load_example():
    return loading.load_example("train_pointins")


def test_train_evaluate_draw(tmp_path, capsys):
    example = load_example()
    results = example.main(TINY + [
        "--synthetic-dir", str(tmp_path / "shapes"), "--png", str(tmp_path / "predictions.png"),
        "--coins-png", str(tmp_path / "coins.png"), "--model-dir", str(tmp_path / "run")])
    printed = capsys.readouterr().out
    for prefix in ("bbox", "segm", "coins/bbox", "coins/segm"):
        for name in STATS:
            assert -1.0 <= results[f"{prefix}/{name}"] <= 1.0, (prefix, name)
    assert "PointINS on fcos" in printed and "segm" in printed and "coins" in printed
    assert np.asarray(Image.open(tmp_path / "predictions.png")).shape == (64, 2 * 64, 3)
    assert np.asarray(Image.open(tmp_path / "coins.png")).shape == (64, 64, 3)
    assert (tmp_path / "run" / "checkpoint").exists()


def test_flags_build_the_model_and_bad_flags_are_refused(capsys):
    example = load_example()
    for argv in (["--image-size", "100"], ["--mask-stride", "3"], ["--detector", "ssd"],
                 ["--fpn-channels", "16", "--head-channels", "32"]):
        with pytest.raises(SystemExit):
            example.parse_args(argv)
    assert "error" in capsys.readouterr().err
    args = example.parse_args([])
    assert (args.detector, args.template_size, args.weight_type, args.max_proposals, args.mask_stride) == (
        "fcos", 3, "depthwise", 128, 4)
    args = example.parse_args(["--image-size", "64", "--width", "0.125", "--fpn-channels", "8", "--groups", "4",
                               "--detector", "retinanet", "--weight-type", "full", "--mask-head-channels", "8"])
    model = example.build_pointins(args, 3)
    assert model.detector == "retinanet" and model.num_weight_sets == 9
    assert model.instance_conv.weight_type == "full" and model.instance_conv.out_channels == 8
    assert model.instance_conv.template_channels == 8 and model.mask_head.channels == 8
