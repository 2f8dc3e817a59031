"""Train Faster R-CNN + FPN with the sibling head or TSD's task-aware head (arXiv 2003.07540),
with softmax, sigmoid, Equalization Loss (arXiv 2003.05176) or EQL v2 classification,
evaluate with COCOeval (AP of the rare / common / frequent classes too), draw the detections
and export a SavedModel for TF Serving.

With no arguments it writes the bundled synthetic shapes dataset (``keras_cvx.data.shapes``)
to a cache folder and trains a small Faster R-CNN (ResNet-10 at a quarter width, 64-channel
FPN, 256-unit box head, 128x128 input) with the sibling head on 2 CPU cores (~43 images/s
there; ~3 images/s with TSD, whose deformable poolings are slow on a CPU, so ``--steps 500``
takes ~2 and ~25 minutes)::

    python examples/train_faster_rcnn.py
    python examples/train_faster_rcnn.py --head tsd --steps 500

The long-tailed demonstration trains on a long-tailed variant of the shapes
(``keras_cvx.data.shapes.LONG_TAILED_PROFILE``: a few frequent, several common and several
rare classes) and evaluates on a balanced validation set, so that every class has enough
validation instances; the rare / common / frequent groups are those of the training set::

    python examples/train_faster_rcnn.py --long-tailed --classification-loss eql
    python examples/train_faster_rcnn.py --long-tailed --classification-loss sigmoid --repeat-factor-sampling

EQL's λ (``--eql-threshold``) and RFS's t (``--rfs-threshold``) default to the smallest
training frequency of a frequent class: the tail is then every rare and common class, as
λ = 0.00177 makes it on LVIS v0.5 (LVIS's own values, 0.00177 and 0.001, would make no
class of an 8-class set tail).

On COCO-format data (json + image folder, or Model Garden TFRecords)::

    python examples/train_faster_rcnn.py --train-json train.json --images imgs/ --val-json val.json \\
        --backbone resnet50 --width 1 --image-size 800 --fpn-channels 256 --fc-units 1024 --head tsd \\
        --batch-size 16 --steps 90000 --optimizer sgd --schedule step --learning-rate 0.02 \\
        --weight-decay 1e-4 --warmup-steps 500 --max-instances 100 --rpn-train-proposals 2000 \\
        --rpn-test-proposals 1000 --roi-samples 512

(the TSD paper's schedule scaled to batch 16, without its ImageNet weights). Every flag of
``keras_cvx.training.cli`` works (``--strategy mirrored``, ``--mixed-precision``,
``--model-dir`` with resume, ...). ``--onnx`` also writes ``<export-dir>/model.onnx``.
"""

import json
import sys

import numpy as np
import tensorflow as tf

from keras_cvx.data.class_frequencies import class_frequencies
from keras_cvx.data.cli import add_data_arguments, check_data_arguments, data_paths, dataset_classes
from keras_cvx.data.coco import coco_dataset
from keras_cvx.data.shapes import LONG_TAILED_PROFILE
from keras_cvx.data.tfrecord import tfrecord_dataset
from keras_cvx.evaluation.coco_evaluator import STAT_NAMES, COCOEvaluator
from keras_cvx.export.cli import add_output_arguments, export_model
from keras_cvx.heads.roi_box import SiblingBoxHead
from keras_cvx.heads.rpn import RPNHead
from keras_cvx.heads.tsd import TSDHead
from keras_cvx.layers.proposal_generator import ProposalGenerator
from keras_cvx.layers.rcnn_decoder import CLASSIFICATION_LOSSES, RCNNDecoder
from keras_cvx.models.anchor_generators.fpn import FPNAnchorGenerator
from keras_cvx.models.detector_parts import RESNET_DEPTHS
from keras_cvx.models.faster_rcnn import BOX_HEADS, FasterRCNN
from keras_cvx.models.label_encoders.roi import RoISampler
from keras_cvx.models.label_encoders.rpn import RPNLabelEncoder
from keras_cvx.models.necks.fpn import FeaturePyramid
from keras_cvx.training.cli import build_trainer, make_parser
from keras_cvx.visualize import save_detections_png

GROUPS = {"r": "rare", "c": "common", "f": "frequent"}


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = make_parser(
        __doc__.splitlines()[0], batch_size=8, steps=2000, learning_rate=0.002, optimizer="adamw",
        warmup_steps=100, weight_decay=1e-4, log_every=25, checkpoint_every=500, clipnorm=10.0,
    )
    data = add_data_arguments(parser, max_instances=16)
    data.add_argument("--synthetic-classes", type=int, default=5, help="(8 with --long-tailed)")
    data.add_argument("--synthetic-min-size", type=int, default=12, help="smallest synthetic object (pixels)")
    data.add_argument("--long-tailed", action="store_true",
                      help="train on the long-tailed synthetic shapes (8 classes; the validation set stays balanced)")
    data.add_argument("--repeat-factor-sampling", action="store_true",
                      help="LVIS repeat-factor sampling of the training images")
    data.add_argument("--rfs-threshold", type=float, default=None,
                      help="t of repeat-factor sampling (default: the smallest frequency of a frequent class)")
    model = parser.add_argument_group("model")
    model.add_argument("--head", choices=BOX_HEADS, default="sibling", help="box head: sibling or TSD")
    model.add_argument("--classification-loss", choices=CLASSIFICATION_LOSSES, default="softmax")
    model.add_argument("--eql-threshold", type=float, default=None,
                       help="EQL's lambda (default: the smallest frequency of a frequent class)")
    model.add_argument("--backbone", choices=sorted(RESNET_DEPTHS), default="resnet10")
    model.add_argument("--width", type=float, default=0.25, help="backbone width multiplier")
    model.add_argument("--image-size", type=int, default=128, help="square input size (a multiple of 32)")
    model.add_argument("--fpn-channels", type=int, default=64, help="(paper: 256)")
    model.add_argument("--fc-units", type=int, default=256, help="units of the box heads' FC layers (paper: 1024)")
    model.add_argument("--anchor-scale", type=float, default=0.5,
                       help="anchor size = scale x 8 x stride (paper: 1, i.e. 32..512 on P2..P6)")
    model.add_argument("--rpn-samples", type=int, default=256, help="anchors sampled per image for the RPN loss")
    model.add_argument("--rpn-train-proposals", type=int, default=300, help="(paper: 2000)")
    model.add_argument("--rpn-test-proposals", type=int, default=300, help="(paper: 1000)")
    model.add_argument("--roi-samples", type=int, default=128, help="RoIs sampled per image (paper: 512)")
    add_output_arguments(parser, "faster_rcnn")
    args = parser.parse_args(argv)
    if args.image_size % 32:
        parser.error("--image-size must be a multiple of 32")
    if args.long_tailed and (args.train_json or args.train_tfrecord):
        parser.error("--long-tailed chooses the synthetic training set; it does not go with real data")
    if args.repeat_factor_sampling and args.train_tfrecord:
        parser.error("--repeat-factor-sampling needs --train-json (the image frequencies come from the json)")
    check_data_arguments(parser, args)
    return args


def frequency_threshold(frequencies, explicit):
    """``explicit``, or the smallest frequency of a frequent class (rare and common are tail)."""
    if explicit is not None:
        return explicit
    frequent = frequencies["frequencies"][frequencies["groups"] == "f"]
    return float(frequent.min()) if frequent.size else float(frequencies["frequencies"].max())


def build_faster_rcnn(args, num_classes, frequencies=None):
    """The Faster R-CNN of the flags (paper sizes with ``--fpn-channels 256 --fc-units 1024
    --anchor-scale 1`` and the paper's proposal and sample counts)."""
    loss = args.classification_loss
    head_class = TSDHead if args.head == "tsd" else SiblingBoxHead
    return FasterRCNN(
        num_classes, image_size=args.image_size, backbone=args.backbone, width_multiplier=args.width,
        neck=FeaturePyramid(args.fpn_channels, 2, 6, "max_pool"), rpn_head=RPNHead(3, 5, args.fpn_channels),
        box_head=head_class(num_classes, classification_loss=loss, hidden_units=args.fc_units, name="box_head"),
        classification_loss=loss,
        class_frequencies=None if frequencies is None else frequencies["frequencies"],
        frequency_threshold=frequency_threshold(frequencies, args.eql_threshold) if frequencies else 0.00177,
        anchor_generator=FPNAnchorGenerator(scales=(args.anchor_scale,)),
        rpn_label_encoder=RPNLabelEncoder(num_samples=args.rpn_samples),
        train_proposals=ProposalGenerator(2000, args.rpn_train_proposals),
        test_proposals=ProposalGenerator(1000, args.rpn_test_proposals),
        roi_sampler=RoISampler(num_classes, num_samples=args.roi_samples), decoder=RCNNDecoder(loss),
        seed=args.seed,
    )


def evaluate(predict, dataset, coco, groups):
    """COCO ``bbox/...`` numbers (and ``bbox/AP_rare`` ... per group) of ``predict(images)``."""
    evaluator = COCOEvaluator(coco, groups=groups)
    for images, targets in dataset:
        evaluator.update(targets["image_info"], {k: np.asarray(v) for k, v in predict(images).items()})
    return {k: v for k, v in evaluator.result().items() if k.count("/") == 1}


def main(argv=None):
    args = parse_args(argv)
    num_synthetic = 8 if args.long_tailed else args.synthetic_classes
    train_json, train_images, val_json, val_images = data_paths(
        args, train_options={"class_weights": LONG_TAILED_PROFILE} if args.long_tailed else None,
        num_classes=num_synthetic, min_size=args.synthetic_min_size)
    size = (args.image_size, args.image_size)
    val_coco, classes, class_names = dataset_classes(val_json)
    frequencies = class_frequencies(train_json) if train_json else None
    groups = None
    if frequencies is not None and args.long_tailed:
        groups = {name: [int(c) for c, g in zip(frequencies["category_ids"], frequencies["groups"]) if g == key]
                  for key, name in GROUPS.items()}
    if args.classification_loss == "eql" and frequencies is None:
        raise SystemExit("--classification-loss eql needs --train-json (class frequencies come from the json)")
    if args.train_tfrecord:
        train = tfrecord_dataset(args.train_tfrecord, classes, size, args.max_instances, args.batch_size,
                                 training=True, seed=args.seed, num_classes=len(classes), strict=args.strict_data)
    else:
        rfs = frequency_threshold(frequencies, args.rfs_threshold) if args.repeat_factor_sampling else None
        train = coco_dataset(train_json, train_images, size, args.max_instances, args.batch_size, training=True,
                             seed=args.seed, num_classes=len(classes), strict=args.strict_data,
                             repeat_factor_threshold=rfs)
    val = coco_dataset(val_json, val_images, size, args.max_instances, args.batch_size, training=False)

    def eval_fn(model, step):
        return {k: v for k, v in evaluate(predict, val, val_coco, groups).items() if k in ("bbox/AP", "bbox/AP50")}

    strategy, trainer = build_trainer(args, lambda: build_faster_rcnn(
        args, len(classes), frequencies if args.classification_loss == "eql" else None),
        eval_fn=eval_fn if args.eval_every else None)
    model = trainer.model
    predict = tf.function(model.predict_step, jit_compile=trainer.jit_compile)
    print(f"FasterRCNN({args.head} head, {args.classification_loss}, {args.backbone} x{args.width}, "
          f"{args.image_size}px, FPN {args.fpn_channels}): {model.count_params():,} parameters, "
          f"{strategy.num_replicas_in_sync} replica(s)")
    trainer.fit(train, args.steps)

    results = evaluate(predict, val, val_coco, groups)
    print("COCO evaluation on the validation set:")
    for name in STAT_NAMES + tuple(f"AP_{g}" for g in (groups or {})):
        print(f"  {name:>11s}  {results.get('bbox/' + name, float('nan')):.4f}")
    if args.results_json:
        with open(args.results_json, "w") as f:
            json.dump(dict(results, step=int(trainer.step.numpy())), f, indent=1)
    if trainer.is_chief:
        images, _ = next(iter(val))
        print("wrote", save_detections_png(args.png, images[:4], predict(images[:4]), class_names))
        export_model(model, args, size)
    return results


if __name__ == "__main__":
    main()
