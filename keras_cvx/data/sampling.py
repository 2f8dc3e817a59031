"""Class-balanced, square-root and repeat-factor sampling for ``tf.data``.

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

Repeat-factor sampling: "LVIS: A Dataset for Large Vocabulary Instance Segmentation", A. Gupta
et al., CVPR 2019, arXiv 1908.03195, §5 (Detectron2's ``RepeatFactorTrainingSampler``): with
f_c the fraction of training images that contain category c and a threshold t,

    r(c) = max(1, sqrt(t / f_c)),    r(I) = max over the categories c in image I of r(c)

and image I is seen r(I) times per epoch, stochastically rounded: floor(r) + Bernoulli(r - floor(r))
times, drawn anew each epoch.
"""

import json
import numbers

import numpy as np
import tensorflow as tf

from keras_cvx.data.class_frequencies import class_frequencies


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


def repeat_factors(coco_annotation_file_or_dict, threshold=0.001):
    """LVIS repeat factors of the categories and images of a COCO-format json (module docstring).

    f_c is ``class_frequencies``'s frequency: the share of the json's images with at least one
    annotation that have one of category c (crowd annotations count too). Images without
    annotations get r(I) = 1; a category without any image has f_c = 0 and r(c) = inf (no
    image carries it).

    Args:
        coco_annotation_file_or_dict: path of a COCO json, or the loaded json dict.
        threshold: t in (0, 1]; categories in fewer than a share t of the images are repeated
            (LVIS: 0.001).

    Returns:
        A dict of NumPy arrays: ``image_ids`` int64 [N] (the json's images in file order),
        ``factors`` float64 [N] (r(I)) and ``class_factors`` float64 [C] (r(c), categories
        ordered by id).

    Example:

    >>> from keras_cvx.data import repeat_factors
    >>> data = {"images": [{"id": i} for i in range(1, 6)], "categories": [{"id": 1}, {"id": 2}],
    ...         "annotations": [{"id": i, "image_id": i, "category_id": 1 + (i == 1)} for i in range(1, 5)]}
    >>> stats = repeat_factors(data, threshold=0.5)  # f = (3/4, 1/4): r(2) = sqrt(0.5 / 0.25)
    >>> stats["class_factors"].round(4).tolist(), stats["factors"].round(4).tolist()
    ([1.0, 1.4142], [1.4142, 1.0, 1.0, 1.0, 1.0])
    """
    _check_threshold("threshold", threshold)
    data = coco_annotation_file_or_dict
    if not isinstance(data, dict):
        with open(data) as f:
            data = json.load(f)
    stats = class_frequencies(data)
    with np.errstate(divide="ignore"):
        class_factors = np.maximum(1.0, np.sqrt(threshold / stats["frequencies"]))
    factor_of = dict(zip(stats["category_ids"].tolist(), class_factors.tolist()))
    image_factors = {}
    for ann in data.get("annotations", []):
        image_factors[ann["image_id"]] = max(image_factors.get(ann["image_id"], 1.0), factor_of[ann["category_id"]])
    image_ids = np.array([image["id"] for image in data["images"]], np.int64)
    factors = np.array([image_factors.get(i, 1.0) for i in image_ids.tolist()], np.float64)
    return {"image_ids": image_ids, "factors": factors, "class_factors": class_factors}


def _check_threshold(name, threshold):
    """A ``ValueError`` naming ``name`` unless ``threshold`` is a number in (0, 1]."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 < threshold <= 1:
        raise ValueError(f"`{name}` must be a number in (0, 1], got {threshold!r}.")


def apply_repeat_factors(dataset, factor_fn, seed=None):
    """Emits each element of ``dataset`` floor(r) + Bernoulli(r - floor(r)) times in a row, where
    r = ``factor_fn(element)`` (stochastic rounding, module docstring).

    The Bernoulli draws come from ``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)``:
    each iteration of the dataset (each epoch, also under ``repeat()``) draws anew, and a
    dataset built again with the same ``seed`` gives the same sequence. Shuffle afterwards (with
    a buffer larger than the largest r) to spread an element's repeats. A negative or
    non-finite factor counts as 0 (the element is skipped): the transformation has no
    assertion ops, so that the iterator can be checkpointed (``keras_cvx.training.Trainer``
    saves the input position).

    Args:
        dataset: a ``tf.data.Dataset``.
        factor_fn: maps an element (a tuple's components as separate arguments, as
            ``Dataset.map`` passes them) to its factor r >= 0, a float scalar tensor; r < 1
            keeps the element with probability r.
        seed: of the Bernoulli draws; ``None`` for a random sequence.

    Returns:
        The repeated ``tf.data.Dataset``, with ``dataset``'s element structure.

    Example:

    >>> import tensorflow as tf
    >>> from keras_cvx.data import apply_repeat_factors
    >>> factors = tf.constant([1.0, 3.0, 0.0])
    >>> ds = apply_repeat_factors(tf.data.Dataset.range(3), lambda i: tf.gather(factors, i), seed=0)
    >>> [int(i) for i in ds]
    [0, 1, 1, 1]
    """
    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).map(_unit_uniform)

    def repeated(element, draw):
        factor = tf.cast(factor_fn(*element) if isinstance(element, tuple) else factor_fn(element), tf.float64)
        # no assertion ops: the Trainer checkpoints the input iterator, and they are stateful
        factor = tf.where(tf.math.is_finite(factor) & (factor > 0), factor, tf.zeros_like(factor))
        whole = tf.floor(factor)
        count = tf.cast(whole, tf.int64) + tf.cast(draw < factor - whole, tf.int64)
        return tf.data.Dataset.from_tensors(element).repeat(count)

    return tf.data.Dataset.zip((dataset, draws)).flat_map(repeated)


def _unit_uniform(bits):
    """A float64 uniform in [0, 1) from ``Dataset.random``'s integer: its low 32 bits / 2^32."""
    return tf.cast(tf.bitwise.bitwise_and(bits, 0xFFFFFFFF), tf.float64) / 2.0**32
