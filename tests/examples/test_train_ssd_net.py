"""The whole example path of ``examples/train_ssd_net.py`` at test size: synthetic shapes ->
Trainer (XLA) -> COCOEvaluator -> PNG -> SavedModel, then the exported model answers."""

import importlib.util
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_example():
    path = os.path.join(REPO_ROOT, "examples", "train_ssd_net.py")
    spec = importlib.util.spec_from_file_location("train_ssd_net", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_evaluate_draw_export(tmp_path, capsys):
    example = load_example()
    export_dir = tmp_path / "saved_models" / "ssd_net"
    results = example.main([
        "--steps", "3", "--batch-size", "2", "--image-size", "64", "--width", "0.125", "--fusion-channels", "8",
        "--synthetic-dir", str(tmp_path / "shapes"), "--synthetic-train-images", "8", "--synthetic-val-images", "4",
        "--export-dir", str(export_dir), "--png", str(tmp_path / "predictions.png"),
        "--model-dir", str(tmp_path / "run"), "--verbose", "0",
    ])
    printed = capsys.readouterr().out
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"):
        assert f"bbox/{name}" in results and f" {name} = " in printed
        assert -1.0 <= results[f"bbox/{name}"] <= 1.0
    picture = np.asarray(Image.open(tmp_path / "predictions.png"))
    assert picture.shape == (64, 2 * 64, 3)  # the first validation batch (2 images) side by side
    assert os.path.exists(tmp_path / "run" / "checkpoint")
    loaded = tf.saved_model.load(str(export_dir / "1"))
    image = np.asarray(Image.open(next((tmp_path / "shapes").glob("val_*/images/*.png"))).convert("RGB"))
    out = loaded.signatures["serving_default"](images=tf.constant(image[None]))
    assert out["detection_boxes"].shape == (1, 100, 4) and out["num_detections"].shape == (1,)
    assert 0 <= int(out["num_detections"][0]) <= 100


def test_real_data_flags_are_checked(capsys):
    example = load_example()
    for argv in (["--train-json", "a.json"], ["--train-json", "a.json", "--images", "d"],
                 ["--train-json", "a.json", "--train-tfrecord", "b-*", "--images", "d", "--val-json", "v.json"],
                 ["--train-tfrecord", "b-*", "--val-json", "v.json"]):
        with pytest.raises(SystemExit):
            example.parse_args(argv)
    args = example.parse_args(["--train-tfrecord", "b-*", "--val-json", "v.json", "--val-images", "d",
                               "--no-net-modules", "--backbone", "vgg16", "--image-size", "300"])
    assert (args.net_modules, args.backbone, args.image_size, args.batch_size) == (False, "vgg16", 300, 8)
    assert "error" in capsys.readouterr().err
