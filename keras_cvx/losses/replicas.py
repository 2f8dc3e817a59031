"""How a loss computed on one replica's examples becomes its share of the global-batch loss.

The rule every keras_cvx model follows in ``compute_loss`` (it is Keras's own rule for
``model.fit`` under ``tf.distribute``): on each of the N replicas of a synchronous strategy,
``compute_loss`` returns the replica's share of the loss of the global batch, so that the
SUM of the replicas' losses (and gradients) is the loss (and gradient) of one process on the
global batch.

* Per-example means: the replica's mean divided by N (``replica_share``); Keras's losses with
  the default ``"sum_over_batch_size"`` reduction already do this.
* Sums normalised by a count (a detector's loss divided by its number of positives):
  ``total / global_count`` with the count summed over the replicas. ``keras_cvx.training.Trainer``
  sums the counts a model reports in ``loss_normalizers(y)`` across replicas before the
  compiled step and hands them back as ``y["loss_normalizers"]``, so that N replicas give the
  loss of one process exactly (Detectron2 and TF Model Garden sum the positives across
  replicas the same way). Without those global counts (``model.fit`` under a strategy) the
  replica's own count is used: ``replica_share(total / count)``, the mean of the replicas'
  normalised losses.

Outside a strategy, and under the JAX backend (whose distribution shards one program over
the global batch), N = 1 and all of this is the plain loss.
"""

import keras
from keras import ops

LOSS_NORMALIZERS = "loss_normalizers"
"""Key of ``y`` under which the Trainer passes the cross-replica sums of ``loss_normalizers``."""


def num_replicas():
    """Replicas in sync under the current ``tf.distribute`` strategy (1 outside one, and under
    backends other than TensorFlow)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def replica_share(loss):
    """``loss / num_replicas()``: a replica's per-example mean as its share of the global mean.

    Under a synchronous ``tf.distribute`` strategy with N replicas the replicas' losses are
    summed, so each returns its mean divided by N (Keras's own rule for ``model.fit``; module
    docstring). Outside a strategy and under other backends N = 1.

    Args:
        loss: the replica's per-example mean (a scalar tensor or number).

    Returns: ``loss`` divided by the number of replicas in sync.

    Example:

    >>> from keras_cvx.losses import replica_share
    >>> round(float(replica_share(3.0)), 4)      # outside any strategy: unchanged
    3.0
    """
    replicas = num_replicas()
    return loss if replicas == 1 else loss * (1.0 / replicas)


def normalized_sum(total, count, y=None, key="num_positives"):
    """``total`` divided by the global ``count``: ``total / max(Σ_replicas count, 1)``.

    How keras_cvx detectors normalise a summed loss by their number of positives under
    ``tf.distribute`` (as Detectron2 and TF Model Garden sum the positives across replicas);
    the module docstring has the rule.

    Args:
        total: the replica's un-normalised loss sum (float32 scalar).
        count: the replica's normaliser (e.g. its number of positives).
        y: the targets given to ``compute_loss``; when they hold ``y["loss_normalizers"][key]``
            (the cross-replica sum of ``count`` from ``keras_cvx.training.Trainer``), that is
            the divisor; otherwise the replica's own ``count`` and ``replica_share``.
        key: the normaliser's name in ``loss_normalizers`` (default ``"num_positives"``).

    Returns:
        float32 scalar, the replica's share of the normalised loss.

    Example:

    >>> from keras_cvx.losses import normalized_sum
    >>> round(float(normalized_sum(6.0, 3)), 4)                        # one replica: 6 / 3
    2.0
    >>> y = {"loss_normalizers": {"num_positives": 12}}                 # global count from the Trainer
    >>> round(float(normalized_sum(6.0, 3, y)), 4)
    0.5
    >>> round(float(normalized_sum(6.0, 0)), 4)                        # no positive: divides by 1
    6.0
    """
    total = ops.cast(total, "float32")
    normalizers = y.get(LOSS_NORMALIZERS) if isinstance(y, dict) else None
    if normalizers is not None and key in normalizers:
        return total / ops.maximum(ops.cast(normalizers[key], "float32"), 1.0)
    return replica_share(total / ops.maximum(ops.cast(count, "float32"), 1.0))
