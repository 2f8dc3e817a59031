"""The example path of ``examples/train_faster_rcnn.py`` at test size: synthetic shapes
(long-tailed, with repeat-factor sampling and EQL) -> Trainer -> COCOEvaluator with the
rare / common / frequent groups of the training set -> PNG. The SavedModel export is skipped
(``--export-dir ''``): tracing the TSD model's serving signatures takes ~70 s on 2 cores, and
``tests/models/test_faster_rcnn.py`` exports and reloads the same model class."""

import os

import numpy as np
import pytest
from PIL import Image

from tests.examples import loading

TINY = ["--steps", "2", "--batch-size", "2", "--image-size", "64", "--width", "0.125", "--fpn-channels", "8",
        "--fc-units", "16", "--rpn-train-proposals", "40", "--rpn-test-proposals", "30", "--roi-samples", "16",
        "--rpn-samples", "32", "--no-jit-compile", "--verbose", "0"]


def load_example():
    return loading.load_example("train_faster_rcnn")


def test_long_tailed_eql_with_repeat_factor_sampling(tmp_path, capsys):
    example = load_example()
    results = example.main(TINY + [
        "--head", "tsd", "--classification-loss", "eql", "--long-tailed", "--repeat-factor-sampling",
        "--synthetic-dir", str(tmp_path / "shapes"), "--synthetic-train-images", "40", "--synthetic-val-images", "2",
        "--png", str(tmp_path / "predictions.png"), "--export-dir", "",
        "--model-dir", str(tmp_path / "run"),
    ])
    printed = capsys.readouterr().out
    for name in ("AP", "AP50", "AR100", "AP_rare", "AP_common", "AP_frequent"):
        assert -1.0 <= results[f"bbox/{name}"] <= 1.0, name
    assert "AP_rare" in printed and "exported" not in printed
    assert os.path.exists(tmp_path / "run" / "checkpoint")
    assert np.asarray(Image.open(tmp_path / "predictions.png")).shape == (64, 2 * 64, 3)


def test_flags_are_checked(capsys):
    example = load_example()
    for argv in (["--image-size", "100"], ["--long-tailed", "--train-json", "a.json", "--images", "d",
                                           "--val-json", "v.json"],
                 ["--repeat-factor-sampling", "--train-tfrecord", "b-*", "--val-json", "v.json", "--val-images", "d"],
                 ["--head", "cascade"]):
        with pytest.raises(SystemExit):
            example.parse_args(argv)
    assert "error" in capsys.readouterr().err
    args = example.parse_args(["--image-size", "64", "--width", "0.125", "--fpn-channels", "8", "--fc-units", "16",
                               "--head", "tsd", "--classification-loss", "eqlv2"])
    model = example.build_faster_rcnn(args, 3)
    assert model.is_tsd and model.classification_loss == "eqlv2" and model.neck.channels == 8
    frequencies = {"frequencies": np.array([0.5, 0.3, 0.01]), "groups": np.array(["f", "f", "r"])}
    assert example.frequency_threshold(frequencies, None) == 0.3 and example.frequency_threshold(frequencies, 0.1) == 0.1
