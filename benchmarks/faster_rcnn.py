"""Faster R-CNN + FPN with TSD's task-aware head against the sibling head: predict time and
Trainer step time on the same backbone, input and batch, and the Trainer step with XLA on and
off (TensorFlow). Everything is measured in one run (interleaved rounds, median) and printed
with the ratios. TSD's paper reports about +10% time over the sibling head (arXiv 2003.07540).

    KERAS_BACKEND=tensorflow python benchmarks/faster_rcnn.py [--rounds 3] [--runs 1]
    KERAS_BACKEND=jax python benchmarks/faster_rcnn.py    # predict only: runs without TensorFlow

Defaults: ResNet-50, 80 classes, 800x800, predict at batch 1 (1000 proposals), train at
batch 1 (2000 proposals, 512 sampled RoIs), the paper's sizes. ``--train-size`` and
``--train-backbone`` make the train steps smaller when their XLA compilation does not fit a
CPU run.
"""

import argparse

import keras
import numpy as np
from timing import compiled, measure  # benchmarks/timing.py (this script's folder is on sys.path)

from keras_cvx.models.faster_rcnn import FasterRCNN

BACKEND = keras.backend.backend()
HEADS = ("sibling", "tsd")


def make_model(head, size, backbone="resnet50"):
    keras.utils.set_random_seed(0)
    return FasterRCNN(80, image_size=(size, size), backbone=backbone, box_head=head)


def training_targets(size, batch, rng):
    boxes = np.zeros((batch, 8, 4), "float32")
    labels = np.full((batch, 8), -1, "int32")
    for b in range(batch):
        for m in range(4):
            x1, y1 = rng.uniform(0, size / 2, 2)
            w, h = rng.uniform(size / 8, size / 2, 2)
            boxes[b, m], labels[b, m] = [x1, y1, x1 + w, y1 + h], rng.integers(0, 80)
    return {"boxes": boxes, "labels": labels}


def train_jobs(rng, size, backbone, batch, steps):
    """``{(head, xla): job}`` of ``steps`` Trainer steps each, one ``fit`` call (TensorFlow only)."""
    import tensorflow as tf

    from keras_cvx.training.trainer import Trainer

    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    dataset = tf.data.Dataset.from_tensors((images, training_targets(size, batch, rng))).repeat()
    jobs = {}
    for head in HEADS:
        for xla in (True, False):
            trainer = Trainer(make_model(head, size, backbone), keras.optimizers.SGD(1e-3, momentum=0.9),
                              jit_compile=xla, verbose=0)
            jobs[(head, xla)] = (lambda t=trainer: t.fit(dataset, int(t.step.numpy()) + steps)["loss"])
    return jobs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--runs", type=int, default=1, help="calls per measurement")
    parser.add_argument("--size", type=int, default=800, help="square input of the predictions")
    parser.add_argument("--no-train", action="store_true", help="predict only")
    parser.add_argument("--train-size", type=int, default=800, help="square input of the train steps")
    parser.add_argument("--train-backbone", default="resnet50")
    parser.add_argument("--train-batch", type=int, default=1)
    parser.add_argument("--train-steps", type=int, default=2, help="Trainer steps per timed fit call")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (1, args.size, args.size, 3)).astype("float32")
    models = {head: make_model(head, args.size) for head in HEADS}
    for head, model in models.items():
        used = model.box_head.count_params() if head == "sibling" else model.box_head.count_inference_params()
        print(f"backend {BACKEND}; FasterRCNN ({head} head, ResNet-50, 80 classes, {args.size}x{args.size}): "
              f"{model.count_params():,} parameters; box head {model.box_head.count_params():,} "
              f"({used:,} used at inference)")
    jobs = {("predict", head): (lambda p=compiled(model.predict_step, model): p(images))
            for head, model in models.items()}
    train = BACKEND == "tensorflow" and not args.no_train
    if train:
        jobs.update({("train",) + key: job for key, job in train_jobs(
            rng, args.train_size, args.train_backbone, args.train_batch, args.train_steps).items()})
    first_call, median = measure(jobs, args.rounds, args.runs)  # first calls: tracing and XLA compilation

    print(f"\npredict, batch 1, {args.size}x{args.size}, XLA ({args.rounds} rounds x {args.runs} runs, median):")
    for head in HEADS:
        key = ("predict", head)
        print(f"  {head:8s} {median[key] * 1e3:9.1f} ms   (first call {first_call[key]:.1f} s)")
    print(f"  TSD / sibling = {median[('predict', 'tsd')] / median[('predict', 'sibling')]:.3f}x")
    if train:
        print(f"\nTrainer step ({args.train_backbone}, {args.train_size}x{args.train_size}, batch {args.train_batch}, "
              f"SGD momentum; a fit call of {args.train_steps} steps / {args.train_steps}):")
        step = {key[1:]: median[key] / args.train_steps for key in median if key[0] == "train"}
        for head in HEADS:
            on, off = step[(head, True)], step[(head, False)]
            print(f"  {head:8s} XLA {on:7.2f} s   no XLA {off:7.2f} s   XLA speed-up {off / on:.2f}x   "
                  f"(first call {first_call[('train', head, True)]:.0f} s / {first_call[('train', head, False)]:.0f} s)")
        for xla in (True, False):
            print(f"  TSD / sibling ({'XLA' if xla else 'no XLA'}) = {step[('tsd', xla)] / step[('sibling', xla)]:.3f}x")


if __name__ == "__main__":
    main()
