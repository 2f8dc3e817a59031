"""Checkpoints every N steps with automatic resume, under any ``tf.distribute`` strategy.

``TrainingCheckpoint`` wraps ``tf.train.Checkpoint`` + ``tf.train.CheckpointManager`` over
the trackables it is given (the Trainer passes the model, the optimizer, which holds the
learning-rate schedule's state ``iterations``, the step and skipped-step counters and the
distributed input iterator). Checkpoints are numbered by the training step
(``ckpt-<step>``).

Resume never starts over silently and never loses a good checkpoint:

- every checkpoint of ``directory`` is a candidate (those the ``checkpoint`` state file lists
  and every ``ckpt-<step>.index`` / ``.data-*`` file, so a lost state file loses nothing; an
  unparsable one is renamed to ``checkpoint.unreadable`` and rewritten), newest first;
- a candidate is used only after all of its tensors were read back (a missing, truncated
  or corrupt file is found before anything is assigned); each unreadable one is reported
  by file name with the reason and the next older one is tried;
- when the directory holds checkpoints and none is readable, ``CheckpointError`` says so
  (resume with ``resume=False`` or another directory to start over deliberately);
- after a fallback the state file lists only the readable checkpoints, so the unreadable
  newer ones neither count towards ``max_to_keep`` nor cause a good one to be deleted (they
  stay on disk for inspection; a later save of the same step replaces them);
- a checkpoint written by a different model or optimizer raises ``CheckpointError`` naming
  the objects that do not match, instead of a partial restore;
- ``ckpt-<step>_temp`` folders left by a write that was interrupted are deleted.

Under ``MultiWorkerMirroredStrategy`` every worker must call ``save`` (saving may run
collectives); only the chief writes into ``directory``, the others write into a private
``directory/worker_tmp_<task_id>`` that is deleted after each save, as the TensorFlow
multi-worker guide prescribes. Every worker restores from the chief's ``directory``
(a file system shared by the workers is assumed).
"""

import logging
import os
import re

import tensorflow as tf

from keras_cvx.validation import require_positive_int

logger = logging.getLogger(__name__)

_CHECKPOINT_FILE = re.compile(r"^(ckpt-(\d+))(\.index|\.data-\d{5}-of-\d{5})$")
_INTERRUPTED_WRITE = re.compile(r"^ckpt-\d+_temp$")
# What reading a damaged checkpoint raises: OpError (NotFound, DataLoss, "not an sstable"),
# IndexError ("Read less bytes than requested"), ValueError (a bad shape or dtype record).
_READ_ERRORS = (tf.errors.OpError, IndexError, ValueError)
# What restoring a readable checkpoint into different objects raises: ValueError (a variable
# of another shape), AssertionError (objects without a value in the checkpoint).
_MISMATCH_ERRORS = (ValueError, AssertionError)


class CheckpointError(RuntimeError):
    """The checkpoints of a run directory cannot be used to resume it."""


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


def _step_of(path):
    return int(os.path.basename(path).rsplit("-", 1)[1])


def _checkpoint_state(directory):
    """``(state proto or None, error or None)`` of the ``checkpoint`` state file."""
    try:
        return tf.train.get_checkpoint_state(directory), None
    except Exception as error:  # protobuf's ParseError, UnicodeDecodeError, ...
        return None, error


def _listed_checkpoints(directory):
    """The prefixes the ``checkpoint`` state file lists ([] when it is missing or unparsable)."""
    state, _ = _checkpoint_state(directory)
    if state is None:
        return []
    return [p if os.path.isabs(p) else os.path.join(directory, p) for p in state.all_model_checkpoint_paths]


def checkpoint_candidates(directory):
    """Prefixes of every checkpoint of ``directory`` (listed in its state file or present as
    files), newest step first."""
    prefixes = set(_listed_checkpoints(directory))
    if tf.io.gfile.isdir(directory):
        for name in tf.io.gfile.listdir(directory):
            match = _CHECKPOINT_FILE.match(name)
            if match:
                prefixes.add(os.path.join(directory, match.group(1)))
    prefixes = {p for p in prefixes if _CHECKPOINT_FILE.match(os.path.basename(p) + ".index")}
    return sorted(prefixes, key=_step_of, reverse=True)


def unreadable_reason(prefix):
    """``None`` when every tensor of checkpoint ``prefix`` reads back, else why not."""
    if not tf.io.gfile.exists(prefix + ".index"):
        return f"{prefix}.index is missing"
    try:
        reader = tf.train.load_checkpoint(prefix)
        for key, dtype in reader.get_variable_to_dtype_map().items():
            if dtype != tf.variant:  # an input iterator's state: read when it is restored
                reader.get_tensor(key)
    except _READ_ERRORS as error:
        return _reason(error)
    return None


def _reason(error):
    message = getattr(error, "message", None) or str(error)
    return f"{type(error).__name__}: {message.strip().splitlines()[0]}"


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
        self._manager = None
        self._state_unreadable = False
        if self._chief:
            self._delete_interrupted_writes()
            self._set_aside_unreadable_state()

    @property
    def manager(self):
        """The ``tf.train.CheckpointManager`` that writes and rotates the checkpoints (made on
        first use, after ``restore_latest`` has corrected the state file)."""
        if self._manager is None:
            self._manager = tf.train.CheckpointManager(
                self.checkpoint, self._write_directory, max_to_keep=self.max_to_keep
            )
        return self._manager

    @property
    def latest(self):
        """Path of the newest readable checkpoint in ``directory`` or ``None``."""
        return next((p for p in checkpoint_candidates(self.directory) if unreadable_reason(p) is None), None)

    def restore_latest(self):
        """Restores the newest readable checkpoint; returns its path, or ``None`` when
        ``directory`` holds no checkpoint. Raises ``CheckpointError`` when it holds
        checkpoints and none can be read, or when the newest readable one does not match
        the trackables."""
        candidates = checkpoint_candidates(self.directory)
        unreadable = []
        for path in candidates:
            reason = unreadable_reason(path)
            if reason is None:
                try:
                    self._restore(path)
                    break
                except (tf.errors.OpError, IndexError) as error:  # a damaged iterator state (not read above)
                    reason = _reason(error)
            unreadable.append(path)
            logger.warning("Checkpoint %s cannot be read (%s); trying the next older one.", path, reason)
        else:
            if candidates:
                raise CheckpointError(
                    f"None of the {len(candidates)} checkpoint(s) in {self.directory!r} can be read "
                    f"({', '.join(os.path.basename(p) for p in candidates)}; reasons logged above). Not "
                    "starting over silently: pass resume=False or another directory to start from scratch."
                )
            return None
        if unreadable:
            logger.warning("Resumed from %s, the newest readable checkpoint (skipped: %s).", path,
                           ", ".join(os.path.basename(p) for p in unreadable))
        if self._chief and (unreadable or self._state_unreadable):
            self._rewrite_state(unreadable, path)
        return path

    def _restore(self, path):
        try:
            self.checkpoint.restore(path).assert_existing_objects_matched()
        except _MISMATCH_ERRORS as error:
            raise CheckpointError(
                f"Checkpoint {path} does not match this run: {str(error).splitlines()[0][:500]} Did the model, "
                "the optimizer or the input pipeline change since it was written? Resume with the same ones, "
                "or pass resume=False or another directory to start over."
            ) from error

    def _rewrite_state(self, unreadable, restored):
        """Rewrites the state file to list the readable checkpoints up to ``restored`` only, so
        that the manager rotates them and never counts (or deletes for) unreadable ones."""
        skipped = set(unreadable)
        kept = [p for p in reversed(checkpoint_candidates(self.directory))
                if p not in skipped and _step_of(p) <= _step_of(restored) and tf.io.gfile.exists(p + ".index")]
        tf.compat.v1.train.update_checkpoint_state(  # relative names, as the manager writes them
            self.directory, os.path.basename(restored),
            all_model_checkpoint_paths=[os.path.basename(p) for p in kept[-self.max_to_keep:]])
        self._manager = None

    def _set_aside_unreadable_state(self):
        """Renames an unparsable ``checkpoint`` state file to ``checkpoint.unreadable`` (the
        checkpoints themselves are found by their file names)."""
        state_file = os.path.join(self.directory, "checkpoint")
        _, error = _checkpoint_state(self.directory)
        if error is not None:
            logger.warning("The checkpoint state file %s cannot be read (%s: %s); it is renamed to "
                           "checkpoint.unreadable and the checkpoints are found by their file names.", state_file,
                           type(error).__name__, str(error).splitlines()[0] if str(error) else "")
            tf.io.gfile.rename(state_file, state_file + ".unreadable", overwrite=True)
            self._state_unreadable = True

    def _delete_interrupted_writes(self):
        if not tf.io.gfile.isdir(self.directory):
            return
        for name in tf.io.gfile.listdir(self.directory):
            if _INTERRUPTED_WRITE.match(name.rstrip("/")):
                logger.warning("Deleting %s, left by an interrupted checkpoint write.", name)
                tf.io.gfile.rmtree(os.path.join(self.directory, name.rstrip("/")))

    def save(self, step):
        """Writes ``ckpt-<step>``; returns the chief's path (``None`` on other workers)."""
        path = self.manager.save(checkpoint_number=int(step))
        if not self._chief:
            tf.io.gfile.rmtree(self._write_directory)
            return None
        return path
