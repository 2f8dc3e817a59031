"""Fixed-size balanced sampling of anchors/proposals for the loss (Faster R-CNN,
arXiv 1506.01497 §3.1.3; used by the RPN and the TSD box head, arXiv 2003.07540 §4).

Per image, from ``labels`` (1 positive, 0 negative, -1 ignored):
``P = min(#positives, floor(num_samples * positive_fraction))`` positives and
``Q = min(#negatives, num_samples - P)`` negatives, uniformly without replacement; the
``num_samples`` output slots hold the ``P`` positives, then the ``Q`` negatives, then ``-1``
padding (static shape; Detectron2 returns a variable-length set instead). Uniform subsets come
from the top-k of uniform random keys. ``seed`` is an int or a ``keras.random.SeedGenerator``
(inside a layer, pass its generator so each call draws new samples); the same int seed gives
the same samples.
"""

import math

import keras
from keras import ops

from keras_cvx.validation import require_positive_int, require_unit_interval


def sample_balanced(labels, num_samples, positive_fraction=0.5, seed=None):
    """Fixed-size balanced sample of positives and negatives, per image.

    Paper: "Faster R-CNN", S. Ren et al., https://arxiv.org/abs/1506.01497, Sec. 3.1.3 (256
    anchors per image, up to half positive; the RPN and the TSD box head use it):
    ``P = min(#positives, ⌊num_samples · positive_fraction⌋)`` positives, then
    ``Q = min(#negatives, num_samples − P)`` negatives, uniformly without replacement, then
    ``-1`` padding (static shape; module docstring).

    Args:
        labels: ``[N]`` or ``[B, N]``: 1 positive, 0 negative, -1 ignored.
        num_samples: output slots per image.
        positive_fraction: largest fraction of positives (default 0.5).
        seed: an int or a ``keras.random.SeedGenerator`` (inside a layer, pass its generator so
            each call draws new samples); the same int seed gives the same samples.

    Returns: ``(indices, sampled_labels)``, int32 ``[num_samples]`` / ``[B, num_samples]``:
    indices into ``N`` (``-1`` for unused slots) and their labels (1, 0, or -1 for unused slots).

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.ops import sample_balanced
    >>> labels = np.array([1, 0, 0, 0, 0, 0, -1, 1])
    >>> indices, sampled = sample_balanced(labels, num_samples=4, positive_fraction=0.25, seed=0)
    >>> keras.ops.convert_to_numpy(sampled).tolist()      # 1 positive (4 · 0.25), 3 negatives
    [1, 0, 0, 0]
    >>> bool(np.all(labels[keras.ops.convert_to_numpy(indices)] == keras.ops.convert_to_numpy(sampled)))
    True
    """
    require_positive_int("num_samples", num_samples)
    require_unit_interval("positive_fraction", positive_fraction, include_one=True)
    labels = ops.cast(ops.convert_to_tensor(labels), "int32")
    if len(labels.shape) == 1:
        indices, sampled = sample_balanced(labels[None], num_samples, positive_fraction, seed)
        return indices[0], sampled[0]
    batch, num = labels.shape
    keys = keras.random.uniform((batch, num), seed=seed)
    if num < num_samples:  # top_k needs k <= N: pad with never-chosen entries
        labels = ops.pad(labels, [[0, 0], [0, num_samples - num]], constant_values=-1)
        keys = ops.pad(keys, [[0, 0], [0, num_samples - num]])

    def pick(wanted):
        members = labels == wanted
        _, order = ops.top_k(ops.where(members, keys, -1.0), num_samples)
        return ops.cast(order, "int32"), ops.sum(ops.cast(members, "int32"), axis=-1, keepdims=True)

    positives, num_pos = pick(1)
    negatives, num_neg = pick(0)
    take_pos = ops.minimum(num_pos, int(math.floor(num_samples * positive_fraction)))
    take_neg = ops.minimum(num_neg, num_samples - take_pos)
    slot = ops.arange(num_samples, dtype="int32")[None]
    from_negatives = ops.take_along_axis(negatives, ops.clip(slot - take_pos, 0, num_samples - 1), axis=-1)
    indices = ops.where(slot < take_pos, positives, ops.where(slot < take_pos + take_neg, from_negatives, -1))
    sampled = ops.where(slot < take_pos, 1, ops.where(slot < take_pos + take_neg, 0, -1))
    return indices, ops.cast(sampled, "int32")


def sample_subset(members, count, seed=None):
    """A uniformly random subset of at most ``count`` members of a boolean mask, static size.

    How the instance-segmentation models cap the instances of their mask loss (CondInst,
    arXiv 2003.05664, samples at most 500 positives of the batch; PointINS likewise): the
    top ``count`` of uniform random keys over the members, padded with invalid slots.

    Args:
        members: boolean ``[...]``; flattened row-major.
        count: output slots.
        seed: an int or a ``keras.random.SeedGenerator``.

    Returns: ``(flat_index, valid)``: int32 ``[count]`` indices into the flattened ``members``
    (0 in invalid slots) and bool ``[count]``. When there are fewer members than ``count`` every
    member is taken.

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.ops import sample_subset
    >>> index, valid = sample_subset(np.array([[False, True], [True, False]]), 3, seed=0)
    >>> sorted(keras.ops.convert_to_numpy(index)[keras.ops.convert_to_numpy(valid)].tolist())
    [1, 2]
    """
    require_positive_int("count", count)
    flat = ops.reshape(ops.convert_to_tensor(members), (-1,))
    priority = ops.where(flat, keras.random.uniform(ops.shape(flat), seed=seed), -1.0)
    padding = ops.full((count,), -1.0)  # so that top_k has enough entries
    values, index = ops.top_k(ops.concatenate([priority, padding]), count)
    valid = values >= 0.0
    return ops.where(valid, ops.cast(index, "int32"), 0), valid
