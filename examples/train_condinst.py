"""Train CondInst (arXiv 2003.05664) for instance segmentation, evaluate box and mask AP with
COCOeval, draw the predicted masks, evaluate on a real photograph and export a SavedModel
with masks for TF Serving.

With no arguments it writes the bundled synthetic shapes dataset (``keras_cvx.data.shapes``)
to a cache folder and trains a small CondInst (ResNet-10 at a quarter width, 64-channel FPN
and heads, 128x128 input) on 2 CPU cores::

    python examples/train_condinst.py

The run prints the COCO bbox and segm numbers of the synthetic validation images, writes
``--png`` (validation images with their masks, boxes and scores;
``saved_models/condinst/predictions.png``), evaluates the model on the bundled photograph of
24 Greek coins (``keras_cvx.data.coins_dataset``; class-agnostic: every detection counts as
a coin) and draws it (``--coins-png``), and exports to ``<export-dir>/<version>``
(``saved_models/condinst/1``; ``--export-dir ''`` skips it) with ``detection_masks`` at the
original image resolution; ``--onnx`` also writes ``<export-dir>/model.onnx`` with the same
input and outputs, masks included (``keras_cvx.export.export_onnx``; the ``[onnx]`` extra).

On COCO-format data with instance masks (json + image folder, or Model Garden TFRecords with
``image/object/mask``)::

    python examples/train_condinst.py --train-json train.json --images imgs/ --val-json val.json \\
        --backbone resnet50 --width 1 --image-size 800 --fpn-channels 256 --head-channels 256 \\
        --mask-branch-channels 128 --batch-size 16 --steps 90000 --optimizer sgd --schedule step \\
        --learning-rate 0.01 --weight-decay 1e-4 --warmup-steps 1000 --max-instances 100
    python examples/train_condinst.py --train-tfrecord 'train-*.tfrecord' --val-json val.json --val-images d/

(the second line of flags is AdelaiDet's ``MS_R_50_1x`` schedule without its multi-scale
resize and ImageNet weights). Every flag of ``keras_cvx.training.cli`` works
(``--strategy mirrored``, ``--mixed-precision``, ``--model-dir`` with resume, ...).
"""

import json
import os
import sys

import numpy as np
import tensorflow as tf

from keras_cvx.data.cli import add_data_arguments, check_data_arguments, data_paths, dataset_classes
from keras_cvx.data.coco import coco_dataset, load_coco
from keras_cvx.data.real_images import coins_dataset
from keras_cvx.data.tfrecord import tfrecord_dataset
from keras_cvx.evaluation.coco_evaluator import STAT_NAMES, COCOEvaluator
from keras_cvx.export.cli import add_output_arguments, export_model
from keras_cvx.heads.condinst import CondInstMaskBranch
from keras_cvx.heads.fcos import FCOSHead
from keras_cvx.layers.fcos_decoder import FCOSDecoder
from keras_cvx.models.condinst import CondInst
from keras_cvx.models.detector_parts import RESNET_DEPTHS
from keras_cvx.models.necks.fpn import FeaturePyramid
from keras_cvx.training.cli import build_trainer, make_parser
from keras_cvx.visualize import save_detections_png

MASK_STRIDE = 4
"""Ground-truth masks on the stride-4 grid (CondInst's mask output stride)."""


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = make_parser(
        __doc__.splitlines()[0], batch_size=8, steps=2000, learning_rate=0.002, optimizer="adamw",
        warmup_steps=100, weight_decay=1e-4, log_every=25, checkpoint_every=500, clipnorm=10.0,
    )
    data = add_data_arguments(parser, max_instances=16, instances="ground-truth instances", masks=True)
    data.add_argument("--synthetic-classes", type=int, default=5)
    data.add_argument("--synthetic-min-size", type=int, default=12, help="smallest synthetic object (pixels)")
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", choices=sorted(RESNET_DEPTHS), default="resnet10")
    model.add_argument("--width", type=float, default=0.25, help="backbone width multiplier")
    model.add_argument("--image-size", type=int, default=128, help="square input size (a multiple of 32)")
    model.add_argument("--fpn-channels", type=int, default=64)
    model.add_argument("--head-channels", type=int, default=None, help="(= --fpn-channels; the head reads the FPN)")
    model.add_argument("--head-convs", type=int, default=2, help="conv + GN + ReLU blocks per FCOS tower (paper: 4)")
    model.add_argument("--groups", type=int, default=16, help="GroupNorm groups of the FCOS towers (paper: 32)")
    model.add_argument("--mask-branch-channels", type=int, default=32, help="(paper: 128)")
    model.add_argument("--max-proposals", type=int, default=500, help="instances of the mask loss per batch")
    model.add_argument("--semantic-loss", action="store_true", help="add the auxiliary semantic loss")
    output = add_output_arguments(parser, "condinst", png_help="picture of validation predictions with their masks")
    output.add_argument("--coins-png", default=os.path.join("saved_models", "condinst", "coins.png"),
                        help="predictions on the bundled coins photograph ('' to skip the coins evaluation)")
    args = parser.parse_args(argv)
    if args.head_channels not in (None, args.fpn_channels):
        parser.error("--head-channels must equal --fpn-channels (the FCOS head reads the FPN maps)")
    if args.image_size % 32:
        parser.error("--image-size must be a multiple of 32")
    check_data_arguments(parser, args)
    return args


def build_condinst(args, num_classes):
    """The CondInst of the flags (paper sizes with ``--fpn-channels 256 --head-convs 4 --groups 32
    --mask-branch-channels 128``)."""
    return CondInst(
        num_classes, image_size=args.image_size, backbone=args.backbone, width_multiplier=args.width,
        neck=FeaturePyramid(args.fpn_channels),
        head=FCOSHead(num_classes, num_convs=args.head_convs, groups=args.groups, return_box_features=True),
        mask_branch=CondInstMaskBranch(args.mask_branch_channels), decoder=FCOSDecoder(),
        semantic_loss=args.semantic_loss, max_proposals=args.max_proposals, seed=args.seed,
    )


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


def main(argv=None):
    args = parse_args(argv)
    train_json, train_images, val_json, val_images = data_paths(
        args, num_classes=args.synthetic_classes, min_size=args.synthetic_min_size)
    size = (args.image_size, args.image_size)
    val_coco, classes, class_names = dataset_classes(val_json)
    if args.train_tfrecord:
        train = tfrecord_dataset(args.train_tfrecord, classes, size, args.max_instances, args.batch_size,
                                 training=True, mask_stride=MASK_STRIDE, seed=args.seed, num_classes=len(classes),
                                 strict=args.strict_data)
    else:
        train = coco_dataset(train_json, train_images, size, args.max_instances, args.batch_size, training=True,
                             mask_stride=MASK_STRIDE, seed=args.seed, num_classes=len(classes),
                             strict=args.strict_data)
    val = coco_dataset(val_json, val_images, size, args.max_instances, args.batch_size, training=False)

    def eval_fn(model, step):
        return {k: v for k, v in evaluate(predict, val, val_coco).items() if k in ("bbox/AP", "segm/AP")}

    strategy, trainer = build_trainer(args, lambda: build_condinst(args, len(classes)),
                                      eval_fn=eval_fn if args.eval_every else None)
    model = trainer.model
    predict = tf.function(model.predict_step, jit_compile=args.jit_compile)
    print(f"CondInst({args.backbone} x{args.width}, {args.image_size}px, FPN {args.fpn_channels}): "
          f"{model.count_params():,} parameters, {model.num_locations} locations, "
          f"{strategy.num_replicas_in_sync} replica(s)")
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


if __name__ == "__main__":
    main()
