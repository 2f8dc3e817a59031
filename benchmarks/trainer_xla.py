"""XLA speed-up of ``keras_cvx.training.Trainer``: training steps per second with the
per-replica forward+backward compiled by XLA (``jit_compile=True``) divided by the same
without XLA, measured in one run on a small conv classifier (interleaved rounds, median).

    KERAS_BACKEND=tensorflow python benchmarks/trainer_xla.py [--steps 30] [--rounds 3]
"""

import argparse
import statistics
import time

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_cvx.losses.replicas import replica_share
from keras_cvx.training.trainer import Trainer


class SmallConvNet(keras.Model):
    """3 conv layers (16, 32, 32 filters, one stride 2), global pooling, 10 classes."""

    def __init__(self):
        super().__init__()
        self.body = [
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]

    def call(self, x, training=False):
        x = x / 255.0
        for layer in self.body:
            x = layer(x)
        return x

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        logp = ops.log_softmax(ops.cast(y_pred, "float32"))
        return replica_share(-ops.mean(ops.take_along_axis(logp, ops.expand_dims(y, -1), axis=-1)))


def make_trainer(jit_compile, images):
    keras.utils.set_random_seed(0)
    model = SmallConvNet()
    model(images[:1])
    return Trainer(model, keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=jit_compile, verbose=0)


def steps_per_second(trainer, dataset, steps):
    start_step = int(trainer.step.numpy())
    start = time.perf_counter()
    trainer.fit(dataset, start_step + steps)
    return steps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (args.batch_size, args.image_size, args.image_size, 3)).astype("float32")
    labels = rng.integers(0, 10, args.batch_size).astype("int32")
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    trainers = {jit: make_trainer(jit, images) for jit in (True, False)}
    for trainer in trainers.values():
        steps_per_second(trainer, dataset, 3)  # tracing and XLA compilation
    rates = {True: [], False: []}
    for _ in range(args.rounds):
        for jit, trainer in trainers.items():
            rates[jit].append(steps_per_second(trainer, dataset, args.steps))
    xla, plain = statistics.median(rates[True]), statistics.median(rates[False])
    print(f"model: SmallConvNet, batch {args.batch_size}, {args.image_size}x{args.image_size}, "
          f"{args.steps} steps x {args.rounds} rounds, device: {tf.config.list_logical_devices()[0].name}")
    print(f"steps/s with XLA: {xla:.2f}   without XLA: {plain:.2f}")
    print(f"XLA speed-up ratio: {xla / plain:.2f}")


if __name__ == "__main__":
    main()
