"""What the instance-segmentation examples (``examples/train_condinst.py``,
``examples/train_pointins.py``) share: their data and model flags, COCO box and mask
evaluation, and the run itself (train -> evaluate on the validation set and on the bundled
coins photograph -> PNGs -> SavedModel).

Data: the bundled synthetic shapes with masks by default (``keras_cvx.data.shapes``), or a
COCO json / Model Garden TFRecords with instance masks (``keras_cvx.data.cli`` flags); the
masks come on the grid of the model's ``mask_stride``.
"""

import json
import os

import numpy as np
import tensorflow as tf

from keras_cvx.data.cli import add_data_arguments, check_data_arguments, data_paths, dataset_classes
from keras_cvx.data.coco import coco_dataset, load_coco
from keras_cvx.data.real_images import coins_dataset
from keras_cvx.data.tfrecord import tfrecord_dataset
from keras_cvx.evaluation.coco_evaluator import STAT_NAMES, COCOEvaluator
from keras_cvx.export.cli import add_output_arguments, export_model
from keras_cvx.models.detector_parts import RESNET_DEPTHS
from keras_cvx.training.cli import build_trainer
from keras_cvx.visualize import save_detections_png


def add_instance_segmentation_arguments(parser, name):
    """Adds the data flags (masks on), the flags of the backbone, FPN and FCOS-style towers
    every instance model has, and the output flags (``--png``, ``--coins-png``, export) of
    ``saved_models/<name>``. Returns the ``model`` argument group (examples add their own)."""
    data = add_data_arguments(parser, max_instances=16, instances="ground-truth instances", masks=True)
    data.add_argument("--synthetic-classes", type=int, default=5)
    data.add_argument("--synthetic-min-size", type=int, default=12, help="smallest synthetic object (pixels)")
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", choices=sorted(RESNET_DEPTHS), default="resnet10")
    model.add_argument("--width", type=float, default=0.25, help="backbone width multiplier")
    model.add_argument("--image-size", type=int, default=128, help="square input size (a multiple of 32)")
    model.add_argument("--fpn-channels", type=int, default=64)
    model.add_argument("--head-channels", type=int, default=None, help="(= --fpn-channels; the head reads the FPN)")
    model.add_argument("--head-convs", type=int, default=2, help="conv blocks per head tower (paper: 4)")
    model.add_argument("--groups", type=int, default=16, help="GroupNorm groups of the FCOS towers (paper: 32)")
    model.add_argument("--max-proposals", type=int, default=500, help="instances of the mask loss per batch")
    output = add_output_arguments(parser, name, png_help="picture of validation predictions with their masks")
    output.add_argument("--coins-png", default=os.path.join("saved_models", name, "coins.png"),
                        help="predictions on the bundled coins photograph ('' to skip the coins evaluation)")
    return model


def check_instance_segmentation_arguments(parser, args):
    """``parser.error`` for inconsistent model or data flags."""
    if args.head_channels not in (None, args.fpn_channels):
        parser.error("--head-channels must equal --fpn-channels (the head reads the FPN maps)")
    if args.image_size % 32:
        parser.error("--image-size must be a multiple of 32")
    check_data_arguments(parser, args)


def evaluate(predict, dataset, coco, class_agnostic=False):
    """COCO ``bbox/...`` and ``segm/...`` numbers of ``predict(images)`` on ``dataset`` against the
    ground truth ``coco``. ``class_agnostic``: every detection is the dataset's first category."""
    evaluator = COCOEvaluator(coco, class_id_map={0: min(coco.getCatIds())} if class_agnostic else None,
                              mask_stride=1)
    for images, targets in dataset:
        detections = {k: np.asarray(v) for k, v in predict(images).items()}
        if class_agnostic:
            detections["classes"] = np.where(detections["classes"] >= 0, 0, -1)
        evaluator.update(targets["image_info"], detections)
    return {k: v for k, v in evaluator.result().items() if k.count("/") == 1}


def print_results(title, results):
    print(title)
    for name in STAT_NAMES:
        print(f"  {name:>5s}  bbox {results.get('bbox/' + name, float('nan')):.4f}"
              f"  segm {results.get('segm/' + name, float('nan')):.4f}")


def train_instance_segmentation(args, build_model, mask_stride, describe):
    """Runs an instance-segmentation example: trains ``build_model(num_classes)`` with the
    ``Trainer`` of the flags on masks of stride ``mask_stride``, prints box and mask AP on the
    validation set and on the bundled coins photograph (class-agnostic), writes ``--results-json``,
    the PNGs and the SavedModel. ``describe(model)`` is the line printed before training.
    Returns the results dict."""
    train_json, train_images, val_json, val_images = data_paths(
        args, num_classes=args.synthetic_classes, min_size=args.synthetic_min_size)
    size = (args.image_size, args.image_size)
    val_coco, classes, class_names = dataset_classes(val_json)
    if args.train_tfrecord:
        train = tfrecord_dataset(args.train_tfrecord, classes, size, args.max_instances, args.batch_size,
                                 training=True, mask_stride=mask_stride, seed=args.seed, num_classes=len(classes),
                                 strict=args.strict_data)
    else:
        train = coco_dataset(train_json, train_images, size, args.max_instances, args.batch_size, training=True,
                             mask_stride=mask_stride, seed=args.seed, num_classes=len(classes),
                             strict=args.strict_data)
    val = coco_dataset(val_json, val_images, size, args.max_instances, args.batch_size, training=False)

    def eval_fn(model, step):
        return {k: v for k, v in evaluate(predict, val, val_coco).items() if k in ("bbox/AP", "segm/AP")}

    strategy, trainer = build_trainer(args, lambda: build_model(len(classes)),
                                      eval_fn=eval_fn if args.eval_every else None)
    model = trainer.model
    predict = tf.function(model.predict_step, jit_compile=trainer.jit_compile)
    print(f"{describe(model)}, {strategy.num_replicas_in_sync} replica(s)")
    trainer.fit(train, args.steps)

    results = evaluate(predict, val, val_coco)
    print_results("COCO evaluation on the validation set:", results)
    if args.coins_png:
        coins_json, coins_dir = coins_dataset()
        coins = coco_dataset(coins_json, coins_dir, size, 32, 1, training=False)
        coins_results = evaluate(predict, coins, load_coco(coins_json), class_agnostic=True)
        print_results("Bundled coins photograph (24 coins, class-agnostic):", coins_results)
        results.update({f"coins/{k}": v for k, v in coins_results.items()})
    if args.results_json:
        with open(args.results_json, "w") as f:
            json.dump(dict(results, step=int(trainer.step.numpy())), f, indent=1)
    if trainer.is_chief:
        images, _ = next(iter(val))
        print("wrote", save_detections_png(args.png, images[:4], predict(images[:4]), class_names))
        if args.coins_png:
            images, _ = next(iter(coins))
            print("wrote", save_detections_png(args.coins_png, images, predict(images), ["coin"] * len(class_names),
                                                  min_score=0.2))
        export_model(model, args, size)
    return results
