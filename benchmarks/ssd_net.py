"""SSD300 vs SSD-NET300 (VGG16, full width, 81 classes): detection throughput (images/s of
``predict_step``: forward, decoding and NMS) at batch 1 and 8, and the training-step time of
``keras_cvx.training.Trainer``, each with XLA on and off, measured in one run (interleaved
rounds, median). Prints the ratios SSD-NET/SSD and XLA/no-XLA.

The train step is timed per step over ``fit`` calls of ``--train-steps`` steps (the per-call
set-up -- dataset distribution, iterator, progress -- amortised), and, for SSD300, also as one
``fit`` call per step with XLA: the Trainer's former default path. The last line compares the
Trainer's default (``jit_compile="auto"``: what it picks on this machine) with that path.

    KERAS_BACKEND=tensorflow python benchmarks/ssd_net.py [--rounds 3] [--runs 3] [--train-batch 2]
"""

import argparse

import keras
import numpy as np
import tensorflow as tf
from timing import measure  # benchmarks/timing.py (this script's folder is on sys.path)

from keras_cvx.models.ssd_net import SSDNet
from keras_cvx.training.trainer import Trainer

SIZE = 300
MODELS = {"SSD300": False, "SSD-NET300": True}


def make_model(net_modules):
    keras.utils.set_random_seed(0)
    return SSDNet(80, SIZE, backbone="vgg16", net_modules=net_modules)


def targets(batch, rng):
    boxes = np.zeros((batch, 8, 4), "float32")
    labels = np.full((batch, 8), -1, "int32")
    for b in range(batch):
        for m in range(4):
            x1, y1 = rng.uniform(0, 200, 2)
            w, h = rng.uniform(20, 100, 2)
            boxes[b, m], labels[b, m] = [x1, y1, x1 + w, y1 + h], rng.integers(0, 80)
    return {"boxes": boxes, "labels": labels}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--runs", type=int, default=3, help="calls per measurement")
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=3, help="steps per timed fit call")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = {b: rng.uniform(0, 255, (b, SIZE, SIZE, 3)).astype("float32") for b in (1, 8)}
    models = {name: make_model(net) for name, net in MODELS.items()}
    for name, model in models.items():
        print(f"{name}: {model.count_params():,} parameters, {model.num_anchors} anchors")

    predictors = {(name, xla): tf.function(model.predict_step, jit_compile=xla)
                  for name, model in models.items() for xla in (True, False)}
    dataset = tf.data.Dataset.from_tensors((images[8][: args.train_batch], targets(args.train_batch, rng))).repeat()
    trainers = {(name, xla): Trainer(make_model(MODELS[name]), keras.optimizers.SGD(1e-3, momentum=0.9),
                                     jit_compile=xla, verbose=0)
                for name in MODELS for xla in (True, False)}

    def train_steps(trainer, steps):
        return lambda: trainer.fit(dataset, int(trainer.step.numpy()) + steps)["loss"]

    jobs = {}
    for key, predict in predictors.items():
        for batch in (1, 8):
            jobs[("predict", batch) + key] = (lambda p=predict, x=images[batch]: p(x))
    for key, trainer in trainers.items():
        jobs[("train", args.train_batch) + key] = train_steps(trainer, args.train_steps)
    former = Trainer(make_model(False), keras.optimizers.SGD(1e-3, momentum=0.9), jit_compile=True, verbose=0)
    jobs["former default"] = train_steps(former, 1)
    default_xla = Trainer(make_model(False), keras.optimizers.SGD(1e-3), verbose=0).jit_compile
    compile_time, median = measure(jobs, args.rounds, args.runs)  # first calls: tracing, XLA compilation

    print(f"device: {tf.config.list_logical_devices()[0].name}, {args.rounds} rounds x {args.runs} calls, median")
    print(f"{'task':<22}{'model':<12}{'XLA':>5}{'first call s':>14}{'s/step':>10}{'images/s':>10}")
    for key, value in median.items():
        if key == "former default":
            continue
        task, batch, name, xla = key
        if task == "train":
            value /= args.train_steps
        print(f"{task + ' batch ' + str(batch):<22}{name:<12}{'on' if xla else 'off':>5}"
              f"{compile_time[key]:>14.1f}{value:>10.3f}{batch / value:>10.2f}")
    print("ratios (throughput):")
    for task, batch in sorted({k[:2] for k in median if k != "former default"}):
        for xla in (True, False):
            ratio = median[(task, batch, "SSD300", xla)] / median[(task, batch, "SSD-NET300", xla)]
            print(f"  {task} batch {batch}, XLA {'on' if xla else 'off'}: SSD-NET/SSD = {ratio:.2f}")
        for name in MODELS:
            ratio = median[(task, batch, name, False)] / median[(task, batch, name, True)]
            print(f"  {task} batch {batch}, {name}: XLA/no-XLA = {ratio:.2f}")
    former_step = median["former default"]
    default_step = median[("train", args.train_batch, "SSD300", default_xla)] / args.train_steps
    print(f"SSD300 train step, batch {args.train_batch}: the Trainer's default (jit_compile='auto' -> XLA "
          f"{'on' if default_xla else 'off'} here) {default_step:.3f} s vs the former default (XLA, one fit call per "
          f"step) {former_step:.3f} s: {former_step / default_step:.2f}x faster")


if __name__ == "__main__":
    main()
