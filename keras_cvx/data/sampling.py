"""Class-balanced and square-root sampling for ``tf.data``.

Paper: "Decoupling Representation and Classifier for Long-Tailed Recognition", B. Kang et al.,
ICLR 2020, arXiv 1910.09217, §3; used with Equalization Loss
(arXiv 2003.05176) as the re-sampling baselines:

    p_j = n_j^q / Σ_i n_i^q     (probability that the next sample comes from class j)

q = 1: instance-balanced (plain shuffling), q = 1/2: square-root, q = 0: class-balanced; then a
random sample of that class. Implementation: one infinite, shuffled stream per class
(``dataset.filter(label == j)``) mixed with ``tf.data.Dataset.sample_from_datasets`` and the
weights p. Deviation from the official ``ClassAwareSampler``: classes are drawn i.i.d. with p
(not a reshuffled class cycle emitting 4 samples per class), and the output is infinite (use
``take``/``steps_per_epoch``). Each class stream scans the source, so the source should be
cheap to iterate (e.g. cached); empty classes (n_j = 0) get probability 0.
"""

import numpy as np
import tensorflow as tf


def class_sampling_probabilities(class_counts, exponent):
    """``p_j = n_j^q / Σ n_i^q`` (classes with n_j = 0 get 0), float64 [C]."""
    counts = np.asarray(class_counts, np.float64)
    if counts.ndim != 1 or counts.size == 0 or np.any(counts < 0) or counts.sum() == 0:
        raise ValueError(f"`class_counts` must be non-negative counts with a positive sum, got {class_counts!r}.")
    if not 0.0 <= float(exponent) <= 1.0:
        raise ValueError(f"`exponent` must be in [0, 1], got {exponent!r}.")
    weights = np.where(counts > 0, np.power(counts, float(exponent), where=counts > 0, out=np.zeros_like(counts)), 0.0)
    return weights / weights.sum()


def resample_by_class(dataset, class_counts, label_fn, exponent=0.0, shuffle_buffer=1024, seed=None):
    """An infinite dataset whose elements come from class j with probability ``p_j``.

    Args:
        dataset: finite ``tf.data.Dataset`` of single examples.
        class_counts: ``n_j`` per class [C] (e.g. ``np.bincount(labels)``).
        label_fn: maps an element to its integer class (a scalar tensor).
        exponent: ``q``: 0 class-balanced, 0.5 square-root, 1 instance-balanced.
        shuffle_buffer: per-class shuffle buffer.
        seed: makes the order reproducible.
    """
    probabilities = class_sampling_probabilities(class_counts, exponent)
    streams, weights = [], []
    for j, p in enumerate(probabilities):
        if p == 0:
            continue
        stream = dataset.filter(lambda *element, j=j: tf.equal(tf.cast(label_fn(*element), tf.int64), j))
        streams.append(stream.shuffle(shuffle_buffer, seed=None if seed is None else seed + j).repeat())
        weights.append(float(p))
    return tf.data.Dataset.sample_from_datasets(streams, weights=weights, seed=seed)
