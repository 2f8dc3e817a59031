"""Train SSD-NET (NETNet, arXiv 2001.06690) or plain SSD, evaluate with COCOeval, draw the
predictions and export a SavedModel for TF Serving.

With no arguments it writes the bundled synthetic shapes dataset (``keras_cvx.data.shapes``)
to a cache folder and trains a small SSD-NET (ResNet-10 at a quarter width, 160×160 input)
that runs in minutes on 2 CPU cores::

    python examples/train_ssd_net.py

Measured on a shared 2-core CPU (other jobs running): 1500 steps of batch 8 take 3-5 minutes
and reach bbox AP50 0.61-0.66 (AP 0.40-0.42) on the synthetic validation images; plain SSD
(``--no-net-modules``) with the same steps reached AP50 0.55-0.60 (AP 0.36-0.40).

On COCO-format data (json + image folder, or Model Garden TFRecords)::

    python examples/train_ssd_net.py --train-json train.json --val-json val.json --images imgs/ \\
        --backbone vgg16 --image-size 300 --width 1 --fusion-channels 256 --batch-size 32 \\
        --steps 400000 --optimizer sgd --schedule step --learning-rate 1e-3 --weight-decay 5e-4 \\
        --warmup-steps 500
    python examples/train_ssd_net.py --train-tfrecord 'train-*.tfrecord' --val-json val.json ...

``--no-net-modules`` trains plain SSD. Every flag of ``keras_cvx.training.cli`` works
(``--strategy mirrored``, ``--mixed-precision``, ``--model-dir`` with resume, ...). The run
prints the 12 COCO bbox numbers of the validation set, writes ``--png`` (the first validation
batch with its detections; ``saved_models/ssd_net/predictions.png``) and exports to
``<export-dir>/<version>`` (``saved_models/ssd_net/1`` by default; see ``saved_models/README.md``).
"""

import json
import os
import tempfile

import numpy as np
import tensorflow as tf

from keras_cvx.data.coco import class_id_map, coco_dataset, load_coco
from keras_cvx.data.shapes import synthetic_shapes
from keras_cvx.data.tfrecord import tfrecord_dataset
from keras_cvx.evaluation.coco_evaluator import STAT_NAMES, COCOEvaluator
from keras_cvx.export.saved_model import export_saved_model
from keras_cvx.models.ssd_net import BACKBONES, SSDNet
from keras_cvx.training.cli import build_trainer, make_parser
from keras_cvx.visualize import draw_detections, save_png


def parse_args(argv=None):
    parser = make_parser(
        __doc__.splitlines()[0], batch_size=8, steps=1500, learning_rate=0.003, optimizer="adamw",
        warmup_steps=100, weight_decay=1e-4, log_every=25, checkpoint_every=500,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--train-json", help="COCO instances json of the training set")
    data.add_argument("--val-json", help="COCO instances json of the validation set")
    data.add_argument("--images", help="image folder of --train-json")
    data.add_argument("--val-images", help="image folder of --val-json (default: --images)")
    data.add_argument("--train-tfrecord", help="glob of Model Garden TFRecords (instead of --train-json/--images)")
    data.add_argument("--max-instances", type=int, default=32, help="ground-truth boxes per image (padded)")
    data.add_argument("--synthetic-dir", default=os.path.join(tempfile.gettempdir(), "keras_cvx_shapes"),
                      help="cache folder of the synthetic dataset (used without --train-json/--train-tfrecord)")
    data.add_argument("--synthetic-train-images", type=int, default=800)
    data.add_argument("--synthetic-val-images", type=int, default=100)
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", choices=BACKBONES, default="resnet10")
    model.add_argument("--image-size", type=int, default=160, help="square input size (300/512: SSD priors)")
    model.add_argument("--width", type=float, default=0.25, help="backbone width multiplier")
    model.add_argument("--fusion-channels", type=int, default=64, help="NNFM width")
    model.add_argument("--net-modules", action="store_true", default=True, help="SSD-NET (NNFM + NETM)")
    model.add_argument("--no-net-modules", dest="net_modules", action="store_false", help="plain SSD")
    output = parser.add_argument_group("output")
    output.add_argument("--export-dir", default=os.path.join("saved_models", "ssd_net"))
    output.add_argument("--export-version", type=int, default=1)
    output.add_argument("--png", default=os.path.join("saved_models", "ssd_net", "predictions.png"),
                        help="picture of validation predictions")
    output.add_argument("--results-json", default=None, help="write the final evaluation numbers here")
    args = parser.parse_args(argv)
    if bool(args.train_json) == bool(args.train_tfrecord) and (args.train_json or args.train_tfrecord):
        parser.error("give either --train-json/--images or --train-tfrecord")
    if args.train_json and not args.images:
        parser.error("--train-json needs --images")
    if (args.train_json or args.train_tfrecord) and not (args.val_json and (args.val_images or args.images)):
        parser.error("real data needs --val-json and its image folder (--val-images or --images)")
    return args


def synthetic_data(args):
    """Writes (once) and returns ``(train_json, train_images, val_json, val_images)``."""
    paths = []
    for split, count, seed in (("train", args.synthetic_train_images, 0), ("val", args.synthetic_val_images, 1)):
        folder = os.path.join(args.synthetic_dir, f"{split}_{count}_{args.image_size}_{seed}")
        annotations = os.path.join(folder, "annotations.json")
        if not os.path.exists(annotations):
            synthetic_shapes(folder, num_images=count, image_size=(args.image_size, args.image_size),
                             num_classes=5, max_objects=6, seed=seed)
        paths += [annotations, os.path.join(folder, "images")]
    return paths


def evaluate(predict, dataset, coco):
    """COCO bbox numbers (``bbox/AP`` ... ``bbox/ARl``) of ``predict(images)`` on ``dataset``
    against the ground truth ``coco`` (a pycocotools ``COCO``)."""
    evaluator = COCOEvaluator(coco)
    for images, targets in dataset:
        evaluator.update(targets["image_info"], predict(images))
    return {k: v for k, v in evaluator.result().items() if k.startswith("bbox/") and k.count("/") == 1}


def draw(predict, dataset, path, class_names, count=4, min_score=0.3):
    """Side-by-side picture of the first ``count`` validation images with detections above ``min_score``."""
    images, _ = next(iter(dataset))
    images = images[:count]
    out = {k: np.asarray(v) for k, v in predict(images).items()}
    pictures = []
    for b, image in enumerate(np.asarray(images)):
        keep = out["scores"][b] >= min_score
        labels = np.where(keep, out["classes"][b], -1)
        pictures.append(draw_detections(image, out["boxes"][b], labels, out["scores"][b], class_names=class_names))
    return save_png(path, np.concatenate(pictures, axis=1))


def main(argv=None):
    args = parse_args(argv)
    if args.train_json or args.train_tfrecord:
        train_json, train_images, val_json = args.train_json, args.images, args.val_json
        val_images = args.val_images or args.images
    else:
        train_json, train_images, val_json, val_images = synthetic_data(args)
    size = (args.image_size, args.image_size)
    val_coco = load_coco(val_json)
    classes = class_id_map(val_coco)
    class_names = [val_coco.cats[classes[k]]["name"] for k in sorted(classes)]
    if args.train_tfrecord:
        train = tfrecord_dataset(args.train_tfrecord, classes, size, args.max_instances, args.batch_size,
                                 training=True, seed=args.seed)
    else:
        train = coco_dataset(train_json, train_images, size, args.max_instances, args.batch_size,
                             training=True, seed=args.seed)
    val = coco_dataset(val_json, val_images, size, args.max_instances, args.batch_size, training=False)

    def build_model():
        return SSDNet(len(classes), image_size=args.image_size, backbone=args.backbone, net_modules=args.net_modules,
                      backbone_width=args.width, fusion_channels=args.fusion_channels)

    def eval_fn(model, step):
        return evaluate(predict, val, val_coco)

    strategy, trainer = build_trainer(args, build_model, eval_fn=eval_fn if args.eval_every else None)
    model = trainer.model
    predict = tf.function(model.predict_step, jit_compile=True)
    print(f"SSDNet({'SSD-NET' if args.net_modules else 'plain SSD'}, {args.backbone} x{args.width}, "
          f"{args.image_size}px): {model.num_priors} priors, {strategy.num_replicas_in_sync} replica(s)")
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
        path = export_saved_model(model, os.path.join(args.export_dir, str(args.export_version)), size)
        print("exported", path)
    return results


if __name__ == "__main__":
    main()
