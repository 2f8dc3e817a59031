"""Tests for keras_cvx.training.instance_segmentation (what the instance-segmentation examples
share): the flags it adds and their checks, and ``evaluate``, which gives box and mask AP 1.0
for predictions equal to the ground truth of a synthetic set (pycocotools on its json) and
less for shifted boxes. The whole run is tested through the examples
(``tests/examples/test_train_condinst.py``, ``test_train_pointins.py``)."""

import argparse

import numpy as np
import pytest

from keras_cvx.data.coco import coco_dataset, load_coco
from keras_cvx.data.shapes import synthetic_shapes
from keras_cvx.training.cli import make_parser
from keras_cvx.training.instance_segmentation import (
    add_instance_segmentation_arguments,
    check_instance_segmentation_arguments,
    evaluate,
)


def _parse(argv):
    parser = make_parser()
    add_instance_segmentation_arguments(parser, "model")
    args = parser.parse_args(argv)
    check_instance_segmentation_arguments(parser, args)
    return args


def test_flags_and_checks(capsys):
    args = _parse([])
    assert (args.backbone, args.image_size, args.max_instances, args.max_proposals) == ("resnet10", 128, 16, 500)
    assert args.coins_png.endswith("coins.png") and "model" in args.coins_png
    for argv in (["--image-size", "100"], ["--fpn-channels", "16", "--head-channels", "32"]):
        with pytest.raises(SystemExit):
            _parse(argv)
    assert "error" in capsys.readouterr().err
    assert isinstance(make_parser(), argparse.ArgumentParser)


def test_evaluate_gives_ap_1_for_the_ground_truth(tmp_path):
    json_path = synthetic_shapes(str(tmp_path / "shapes"), num_images=3, image_size=(64, 64), seed=3)
    image_dir = str(tmp_path / "shapes" / "images")
    dataset = coco_dataset(json_path, image_dir, (64, 64), 8, 3, training=False, mask_stride=1)

    def ground_truth(images, shift=0.0):
        _, targets = next(iter(dataset))
        labels = targets["labels"].numpy()
        valid = labels >= 0
        return {"boxes": targets["boxes"].numpy() + shift * valid[..., None], "scores": valid.astype("float32"),
                "classes": np.where(valid, labels, -1), "num_detections": valid.sum(1).astype("int32"),
                "masks": targets["masks"].numpy().astype("uint8")}

    perfect = evaluate(ground_truth, dataset, load_coco(json_path))
    assert perfect["bbox/AP"] == pytest.approx(1.0) and perfect["segm/AP"] == pytest.approx(1.0)
    shifted = evaluate(lambda images: ground_truth(images, shift=6.0), dataset, load_coco(json_path))
    assert shifted["bbox/AP"] < 0.9 and shifted["segm/AP"] == pytest.approx(1.0)
