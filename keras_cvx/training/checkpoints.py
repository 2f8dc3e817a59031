"""Checkpoints every N steps with automatic resume, under any ``tf.distribute`` strategy.

``TrainingCheckpoint`` wraps ``tf.train.Checkpoint`` + ``tf.train.CheckpointManager`` over
the trackables it is given (the Trainer passes the model, the optimizer, which holds the
learning-rate schedule's state ``iterations``, the step and skipped-step counters and the
distributed input iterator). Checkpoints are numbered by the training step
(``ckpt-<step>``).

Under ``MultiWorkerMirroredStrategy`` every worker must call ``save`` (saving may run
collectives); only the chief writes into ``directory``, the others write into a private
``directory/worker_tmp_<task_id>`` that is deleted after each save, as the TensorFlow
multi-worker guide prescribes. Every worker restores from the chief's ``directory``
(a file system shared by the workers is assumed).
"""

import os

import tensorflow as tf

from keras_cvx.validation import require_positive_int


def is_chief(strategy):
    """True for the worker that writes checkpoints, summaries and progress output."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def _task_id(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver.task_id if resolver is not None and resolver.task_id is not None else 0


class TrainingCheckpoint:
    """Saves and restores ``trackables`` (keyword arguments) in ``directory``.

    Args:
        directory: where checkpoints are written and looked up.
        strategy: the ``tf.distribute`` strategy the trackables were created under.
        max_to_keep: how many recent checkpoints to keep.
        **trackables: objects passed to ``tf.train.Checkpoint``.
    """

    def __init__(self, directory, strategy, max_to_keep=3, **trackables):
        self.directory = directory
        self.max_to_keep = require_positive_int("max_to_keep", max_to_keep)
        self._chief = is_chief(strategy)
        self._write_directory = (
            directory if self._chief else os.path.join(directory, f"worker_tmp_{_task_id(strategy)}")
        )
        self.checkpoint = tf.train.Checkpoint(**trackables)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self._write_directory, max_to_keep=self.max_to_keep
        )

    @property
    def latest(self):
        """Path of the newest checkpoint in ``directory`` or ``None``."""
        return tf.train.latest_checkpoint(self.directory)

    def restore_latest(self):
        """Restores the newest checkpoint if there is one; returns its path or ``None``."""
        path = self.latest
        if path is not None:
            self.checkpoint.restore(path).assert_existing_objects_matched()
        return path

    def save(self, step):
        """Writes ``ckpt-<step>``; returns the chief's path (``None`` on other workers)."""
        path = self.manager.save(checkpoint_number=int(step))
        if not self._chief:
            tf.io.gfile.rmtree(self._write_directory)
            return None
        return path
