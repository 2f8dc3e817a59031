"""Train SSD-NET (NETNet, arXiv 2001.06690) or plain SSD, evaluate with COCOeval, draw the
predictions and export a SavedModel for TF Serving.

With no arguments it writes the bundled synthetic shapes dataset (``keras_cvx.data.shapes``)
to a cache folder and trains a small SSD-NET (ResNet-10 at a quarter width, 160×160 input)
that runs in minutes on 2 CPU cores::

    python examples/train_ssd_net.py

Measured on a 2-core CPU, 1500 steps of batch 8 (3.5-5 minutes), seeds 0, 1, 2: with the
default SSD augmentation bbox AP50 0.490-0.515 (AP 0.324-0.335) on the synthetic validation
images; with ``--no-ssd-augmentation`` AP50 0.642-0.659 (AP 0.418-0.427). At this short
budget the augmentation's harder samples cost more than they regularise; the paper's gain
(+8.8 mAP on VOC) comes with schedules of 120k iterations and more. Plain SSD
(``--no-net-modules``, without SSD augmentation, same steps) reached AP50 0.55-0.60 (AP
0.36-0.40), SSD-NET 0.61-0.66 (AP 0.40-0.42) in that earlier measurement.

On COCO-format data (json + image folder, or Model Garden TFRecords)::

    python examples/train_ssd_net.py --train-json train.json --val-json val.json --images imgs/ \\
        --backbone vgg16 --image-size 300 --width 1 --fusion-channels 256 --batch-size 32 \\
        --steps 400000 --optimizer sgd --schedule step --learning-rate 1e-3 --weight-decay 5e-4 \\
        --warmup-steps 500
    python examples/train_ssd_net.py --train-tfrecord 'train-*.tfrecord' --val-json val.json ...

``--no-net-modules`` trains plain SSD. Every flag of ``keras_cvx.training.cli`` works
(``--strategy mirrored``, ``--mixed-precision``, ``--model-dir`` with resume, ...). The run
prints the 12 COCO bbox numbers of the validation set, writes ``--png`` (the first validation
batch with its detections; ``saved_models/ssd_net/predictions.png``), ``--augmentation-png``
(SSD-augmented samples of the two bundled photographs with their boxes,
``saved_models/ssd_net/ssd_augmentation.png``) and exports to ``<export-dir>/<version>``
(``saved_models/ssd_net/1`` by default; see ``saved_models/README.md``); ``--onnx`` also writes
``<export-dir>/model.onnx`` for ONNX Runtime (``keras_cvx.export.export_onnx``: the same input
and outputs, pre-processing, decoding and NMS inside; needs ``pip install -e ".[onnx]"``).

Data augmentation: by default the training images go through SSD's augmentation
(``keras_cvx.data.ssd_augment``: photometric distortion, zoom-out expand, min-IoU crop, flip,
warp resize; SSD paper arXiv 1512.02325 Sec. 2.2/3.6), and the validation images through
SSD's test transform (warp resize; ``--eval-resize``). ``--no-ssd-augmentation`` trains on
the letterboxed images with a random flip only (``keras_cvx.data.coco``). SSD augmentation
reads COCO json + images; with ``--train-tfrecord`` pass ``--no-ssd-augmentation``. To compare
both on the synthetic shapes, same budget, several seeds::

    for seed in 0 1 2; do
      python examples/train_ssd_net.py --seed $seed --results-json aug_$seed.json
      python examples/train_ssd_net.py --seed $seed --no-ssd-augmentation --results-json plain_$seed.json
    done

(the synthetic images are square, so warp and letterbox resizing give the same validation
images.)

Paper recipes: ``--preset NAME`` sets the flags of SSD's published training (table below);
flags given explicitly win. Without ``--learning-rate`` the learning rate follows the batch
size linearly from the preset's (Goyal et al., arXiv 1706.02677), and the decay steps scale
with ``--steps`` (e.g. ``--steps 200000`` halves them)::

    python examples/train_ssd_net.py --preset ssd300_coco --train-json instances_train2017.json \
        --images train2017/ --val-json instances_val2017.json --val-images val2017/ --strategy mirrored

========== ===== ===== ======= ========= ==================== ========= =========================
preset     size  batch lr      steps     lr ×0.1 at           warm-up   source
========== ===== ===== ======= ========= ==================== ========= =========================
ssd300_voc  300  32    1e-3    120,000   80,000 / 100,000     500       Caffe ``ssd_pascal.py``
ssd512_voc  512  32    1e-3    120,000   80,000 / 100,000     500       Caffe ``ssd_pascal_512.py``
ssd300_coco 300  32    1e-3    400,000   280,000 / 360,000    500       Caffe ``ssd_coco.py``
ssd512_coco 512  24    1e-3    520,000   360,000 / 480,000    500       lufficc/SSD ``vgg_ssd512_coco_trainval35k.yaml``
========== ===== ===== ======= ========= ==================== ========= =========================

Common to all (SSD paper Sec. 3 and the same solver files): SGD with momentum 0.9, weight decay
5e-4, VGG16 with ImageNet weights (fc6/fc7 converted to conv6/conv7; ``--backbone-weights
imagenet``, downloaded through ``keras.applications``), SSD augmentation, SSD-NET width 256
(``--fusion-channels``; NETNet's own training recipe is not published), up to 100 (COCO) or
64 (VOC) ground-truth boxes per image. The warm-up is linear from 1/3 of the learning rate
over 500 steps (lufficc/SSD's ``WARMUP_FACTOR``/``WARMUP_ITERS``; Caffe SSD and ssd.pytorch
have none). Caffe's effective learning rate is 0.001 (``base_lr`` 0.00004 × 25 for the VALID
loss normalisation). Differences that remain: Caffe doubles the biases' learning rate and
exempts them from weight decay (``lr_mult: 2, decay_mult: 0``); Keras's SGD decays every
weight, decoupled from the momentum. The VOC presets set VOC's schedule and batch but SSDNet
still uses the COCO prior sizes (VOC's are 30/60/111/162/213/264 at 300). The paper's first
version trained VOC for 40k + 10k + 10k and COCO for 160k + 40k + 40k iterations; the solver
files above are the later, longer schedules that go with the expansion augmentation.
"""

import argparse
import json
import os
import sys

import keras
import tensorflow as tf

from keras_cvx.data.cli import add_data_arguments, check_data_arguments, data_paths, dataset_classes
from keras_cvx.data.coco import coco_dataset
from keras_cvx.data.ssd_augment import ssd_coco_dataset, write_augmentation_grid
from keras_cvx.data.tfrecord import tfrecord_dataset
from keras_cvx.evaluation.coco_evaluator import STAT_NAMES, COCOEvaluator
from keras_cvx.export.cli import add_output_arguments, export_model
from keras_cvx.models.backbones.vgg import convert_vgg16_weights
from keras_cvx.models.ssd_net import BACKBONES, SSDNet
from keras_cvx.training.cli import build_trainer, make_parser
from keras_cvx.training.schedules import WarmupStepDecay
from keras_cvx.visualize import save_detections_png

_SSD_SOLVER = dict(backbone="vgg16", width=1.0, fusion_channels=256, learning_rate=1e-3, optimizer="sgd",
                   schedule="step", warmup_steps=500, weight_decay=5e-4, ssd_augmentation=True,
                   backbone_weights="imagenet", log_every=100, checkpoint_every=5000)
PRESETS = {
    "ssd300_voc": {"flags": dict(_SSD_SOLVER, image_size=300, batch_size=32, steps=120_000, max_instances=64),
                   "decay_steps": (80_000, 100_000)},
    "ssd512_voc": {"flags": dict(_SSD_SOLVER, image_size=512, batch_size=32, steps=120_000, max_instances=64),
                   "decay_steps": (80_000, 100_000)},
    "ssd300_coco": {"flags": dict(_SSD_SOLVER, image_size=300, batch_size=32, steps=400_000, max_instances=100),
                    "decay_steps": (280_000, 360_000)},
    "ssd512_coco": {"flags": dict(_SSD_SOLVER, image_size=512, batch_size=24, steps=520_000, max_instances=100),
                    "decay_steps": (360_000, 480_000)},
}
"""SSD's published training recipes (module docstring): parser defaults and decay steps."""
WARMUP_START = 1.0 / 3.0
"""Preset warm-up starts at this fraction of the learning rate (lufficc/SSD)."""


def _given(argv, flag):
    return any(arg == flag or arg.startswith(flag + "=") for arg in argv)


def preset_schedule(args):
    """The preset's step schedule (``None`` without a preset or with another ``--schedule``):
    linear warm-up from 1/3, ×0.1 at the preset's decay steps scaled to ``--steps``."""
    if not args.preset or args.schedule != "step":
        return None
    preset = PRESETS[args.preset]
    scale = args.steps / preset["flags"]["steps"]
    boundaries = sorted({round(b * scale) for b in preset["decay_steps"] if round(b * scale) > 0})
    return WarmupStepDecay(args.learning_rate, boundaries, warmup_steps=args.warmup_steps, warmup_start=WARMUP_START)


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--preset", choices=sorted(PRESETS))
    preset = first.parse_known_args(argv)[0].preset
    parser = make_parser(
        __doc__.splitlines()[0], batch_size=8, steps=1500, learning_rate=0.003, optimizer="adamw",
        warmup_steps=100, weight_decay=1e-4, log_every=25, checkpoint_every=500,
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="SSD's published training recipe (see the module docstring); explicit flags win")
    data = add_data_arguments(parser, max_instances=32)
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", choices=BACKBONES, default="resnet10")
    model.add_argument("--image-size", type=int, default=160, help="square input size (300/512: SSD anchors)")
    model.add_argument("--width", type=float, default=0.25, help="backbone width multiplier")
    model.add_argument("--fusion-channels", type=int, default=64, help="NNFM width")
    model.add_argument("--net-modules", action="store_true", default=True, help="SSD-NET (NNFM + NETM)")
    model.add_argument("--no-net-modules", dest="net_modules", action="store_false", help="plain SSD")
    model.add_argument("--backbone-weights", choices=("none", "imagenet"), default="none",
                       help="imagenet: VGG16 from keras.applications, fc6/fc7 converted (vgg16, --width 1)")
    data.add_argument("--ssd-augmentation", action=argparse.BooleanOptionalAction, default=True,
                      help="SSD's photometric/expand/min-IoU crop/flip/warp augmentation of the training images")
    data.add_argument("--eval-resize", choices=("warp", "letterbox"), default=None,
                      help="validation resize (default: warp with --ssd-augmentation, as SSD tests; else letterbox)")
    output = add_output_arguments(parser, "ssd_net")
    output.add_argument("--augmentation-png", default=os.path.join("saved_models", "ssd_net", "ssd_augmentation.png"),
                        help="SSD-augmented samples of the bundled photographs ('' to skip)")
    if preset:
        parser.set_defaults(**PRESETS[preset]["flags"])
    args = parser.parse_args(argv)
    if preset and not _given(argv, "--learning-rate"):
        args.learning_rate *= args.batch_size / PRESETS[preset]["flags"]["batch_size"]
    if args.eval_resize is None:
        args.eval_resize = "warp" if args.ssd_augmentation else "letterbox"
    if args.train_tfrecord and args.ssd_augmentation:
        parser.error("--train-tfrecord has no SSD augmentation: add --no-ssd-augmentation (or use --train-json)")
    if args.backbone_weights == "imagenet" and (args.backbone != "vgg16" or args.width != 1.0):
        parser.error("--backbone-weights imagenet needs --backbone vgg16 and --width 1")
    check_data_arguments(parser, args)
    return args


def evaluate(predict, dataset, coco):
    """COCO bbox numbers (``bbox/AP`` ... ``bbox/ARl``) of ``predict(images)`` on ``dataset``
    against the ground truth ``coco`` (a pycocotools ``COCO``). Warp-resized images
    (``image_info["scale_y"]``) map their boxes back per axis before the evaluator sees them."""
    evaluator = COCOEvaluator(coco)
    for images, targets in dataset:
        info, detections = dict(targets["image_info"]), dict(predict(images))
        if "scale_y" in info:
            scale_x, scale_y = info["scale"], info.pop("scale_y")
            per_axis = tf.stack([scale_x, scale_y, scale_x, scale_y], axis=-1)[:, None, :]
            detections["boxes"] = tf.cast(detections["boxes"], tf.float32) / per_axis
            info["scale"] = tf.ones_like(scale_x)
        evaluator.update(info, detections)
    return {k: v for k, v in evaluator.result().items() if k.startswith("bbox/") and k.count("/") == 1}


def draw(predict, dataset, path, class_names, count=4, min_score=0.3):
    """Side-by-side picture of the first ``count`` validation images with detections above ``min_score``."""
    images, _ = next(iter(dataset))
    return save_detections_png(path, images[:count], predict(images[:count]), class_names, min_score)


def main(argv=None):
    args = parse_args(argv)
    train_json, train_images, val_json, val_images = data_paths(args)
    size = (args.image_size, args.image_size)
    val_coco, classes, class_names = dataset_classes(val_json)
    if args.train_tfrecord:
        train = tfrecord_dataset(args.train_tfrecord, classes, size, args.max_instances, args.batch_size,
                                 training=True, seed=args.seed, num_classes=len(classes), strict=args.strict_data)
    elif args.ssd_augmentation:
        train = ssd_coco_dataset(train_json, train_images, size, args.max_instances, args.batch_size,
                                 training=True, seed=args.seed, num_classes=len(classes), strict=args.strict_data)
    else:
        train = coco_dataset(train_json, train_images, size, args.max_instances, args.batch_size,
                             training=True, seed=args.seed, num_classes=len(classes), strict=args.strict_data)
    if args.eval_resize == "warp":
        val = ssd_coco_dataset(val_json, val_images, size, args.max_instances, args.batch_size, training=False)
    else:
        val = coco_dataset(val_json, val_images, size, args.max_instances, args.batch_size, training=False)

    def build_model():
        model = SSDNet(len(classes), image_size=args.image_size, backbone=args.backbone, net_modules=args.net_modules,
                       width_multiplier=args.width, fusion_channels=args.fusion_channels)
        if args.backbone_weights == "imagenet":  # before the Trainer restores a checkpoint, which wins
            convert_vgg16_weights(keras.applications.VGG16(include_top=True, weights="imagenet"), model.backbone)
        return model

    def eval_fn(model, step):
        return evaluate(predict, val, val_coco)

    strategy, trainer = build_trainer(args, build_model, eval_fn=eval_fn if args.eval_every else None)
    schedule = preset_schedule(args)
    if schedule is not None:  # the preset's decay steps (cli's "step" decays at 2/3 and 8/9 of --steps)
        trainer.optimizer.learning_rate = schedule
    model = trainer.model
    predict = tf.function(model.predict_step, jit_compile=True)
    print(f"SSDNet({'SSD-NET' if args.net_modules else 'plain SSD'}, {args.backbone} x{args.width}, "
          f"{args.image_size}px): {model.num_anchors} anchors, {strategy.num_replicas_in_sync} replica(s)")
    trainer.fit(train, args.steps)
    print(f"parameters: {model.count_params():,}")

    results = evaluate(predict, val, val_coco)
    print("COCO bbox evaluation on the validation set:")
    for name in STAT_NAMES:
        print(f"  {name:>5s} = {results['bbox/' + name]:.4f}")
    if args.results_json:
        with open(args.results_json, "w") as f:
            json.dump(dict(results, step=int(trainer.step.numpy())), f, indent=1)
    if trainer.is_chief:
        os.makedirs(os.path.dirname(os.path.abspath(args.png)), exist_ok=True)
        print("wrote", draw(predict, val, args.png, class_names))
        if args.augmentation_png:
            print("wrote", write_augmentation_grid(args.augmentation_png, output_size=size, samples=4, seed=args.seed))
        export_model(model, args, size)
    return results


if __name__ == "__main__":
    main()
