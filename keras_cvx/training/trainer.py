"""``Trainer``: a custom ``tf.distribute`` training loop for any Keras model that implements
``compute_loss`` (every keras_cvx detector and classifier, and Keras models compiled with a loss).

The rule, under every strategy (default, ``MirroredStrategy``, ``MultiWorkerMirroredStrategy``):
one step applies the gradient of the loss of the *global* batch (the dataset's batch, split
over the replicas), so N replicas or N workers train exactly as one process on that batch,
and the learning rate is the one for the global batch size. Scaling out with the same
global batch changes nothing but the speed; growing the global batch with the replicas
calls for the learning rate you would use for that batch on one device (e.g. the linear
scaling rule).

Why not ``model.fit``: Keras 3 ``fit`` fails under ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585) and ``fit(jit_compile=True)`` fails under ``MirroredStrategy`` on
several CPU devices. Here one step is::

    strategy.run(replica_step)                             # per replica
        counts = model.loss_normalizers(y); all_reduce(SUM) (models that have it)
        loss, terms, grads, state = forward_backward(x, y) # tf.function(jit_compile=True): XLA
        loss, terms, grads = all_reduce(SUM)               # the global-batch loss and gradient
        state = all_reduce(MEAN) (SUM of the increments for "sum"-aggregated variables)
        finite check (same on every replica), clip by the global norm
        replica_ctx.merge_call(commit_or_skip)             # cross-replica: tf.cond(finite, ...)
            commit: optimizer update on every replica; assign the reduced state
            skip:   nothing changes (skipped_steps += 1; the loss scale is halved)

The loss terms of a model with ``loss_terms(y, y_pred, sample_weight) -> dict`` (the keras_cvx
detectors: RPN, R-CNN, TSD, progressive-constraint, mask ... terms) are summed into the loss,
reduced over the replicas like it, and logged (progress bar and summaries) beside it; other
models' loss is their ``compute_loss``.

The loss: ``compute_loss`` returns the replica's share of the global-batch loss, so the SUM
over replicas is the loss of one process (Keras's own convention under ``tf.distribute``:
its ``"sum_over_batch_size"`` losses divide by the replica count;
``keras_cvx.losses.replicas`` gives the same to keras_cvx's models). A model whose loss is a
sum normalised by a count (a detector's positives) reports the counts in
``loss_normalizers(y) -> dict``; the trainer sums them over the replicas before the compiled
step and passes the sums as ``y["loss_normalizers"]``, so the division uses the count of the
global batch (as Detectron2 and TF Model Garden do). Batch the dataset with the global batch
size and ``drop_remainder=True`` (equal replica batches).

State a layer updates in the forward pass (BatchNorm moving statistics, ChannelEquilibrium's
running whitening, EQL v2's gradient statistics): the compiled step computes it without
assigning it (``keras.StatelessScope``); the trainer then reduces it over the replicas and
commits it with the update, only when the step is finite. Floating-point state becomes the
mean over the replicas (for a per-replica BatchNorm: the moving averages of the replicas'
batch statistics averaged, as a single process that normalised each replica's share of the
batch separately would hold), or, for variables created with ``aggregation="sum"``, the old
value plus the sum of the replicas' increments (accumulated statistics). Every replica and
worker then holds the same values, so any worker's checkpoint equals the chief's. Integer
state (random-seed counters) stays per replica.

Keras 3 optimizers under ``tf.distribute``: ``optimizer.apply`` called in replica context
all-reduces (SUM) the gradients it is given before the update, and ``maybe_merge_call``
fails when it is called in cross-replica context. The gradients are therefore reduced once
by the trainer (clipping and the finite check need the global gradient) and handed to
``apply`` divided by ``num_replicas_in_sync``, so the optimizer's own SUM restores them
(exactly when the replica count is a power of two, within one rounding otherwise). The
update runs inside ``tf.cond`` in cross-replica context, the pattern Keras's own
``LossScaleOptimizer`` uses.

XLA (``jit_compile``, default ``"auto"``): on a GPU or TPU the forward+backward is compiled by
XLA. On a CPU it is compiled unless the model's class says ``xla_on_cpu = False``, which the
keras_cvx models set from measurements on a 2-core AVX-512 Xeon, where TensorFlow's oneDNN
convolution kernels beat XLA's CPU convolution gradients for convolution-bound models (SSD300
train step at batch 2: 1.69-2.19 s without XLA, 2.24-2.74 s with, in separate runs, and on par
in one interleaved benchmark; CondInst 0.80-0.91x with XLA), while
gather-heavy or small models gain from XLA (Faster R-CNN 1.12x, with TSD 2.08x; a small conv
classifier 2.0x). ``benchmarks/ssd_net.py``, ``benchmarks/condinst.py`` and
``benchmarks/faster_rcnn.py`` measure it on your machine; ``jit_compile=True``/``False`` forces it.

Non-finite steps: a step whose loss, gradients or new state is not finite changes nothing --
no weights, no optimizer slots, no BatchNorm statistics. After ``max_consecutive_nonfinite``
such steps in a row training stops with ``NonFiniteLossError`` naming the step and what was
not finite (with ``mixed_float16`` loss scaling, overflowing gradients alone are the normal
way the scale adapts and do not count). Checkpoints are never written with a non-finite
tensor.

Mixed precision: under a ``mixed_float16`` model policy the optimizer is wrapped in
``keras.optimizers.LossScaleOptimizer`` (dynamic loss scaling; a non-finite step halves
the scale); ``mixed_bfloat16`` needs no scaling. The loss is computed in float32.

Resume: the newest checkpoint of ``model_dir`` (model, optimizer, step counters and, where
the strategy's input iterator is trackable -- the default strategy -- the iterator) is
restored; when the iterator is not trackable (``MirroredStrategy``,
``MultiWorkerMirroredStrategy`` in TF 2.21) the input is replayed with
``dataset.skip(step)``, which gives the same batches for a deterministic pipeline.

Labels: every batch's class ids are checked before the compiled step (an out-of-range id
would otherwise be clamped silently by XLA's gather): ``y["labels"]`` (or an integer ``y``)
of a model with an integer ``num_classes`` must be in ``[0, num_classes)`` or
``PADDING_LABEL`` (-1); the integer ``y`` of a model compiled with
``SparseCategoricalCrossentropy`` must be in ``[0, outputs)`` (or its ``ignore_class``). A bad
batch raises a ``ValueError`` naming the step and the bad ids, before anything is changed.

Checkpoints on resume (``keras_cvx.training.checkpoints``): the newest readable checkpoint is
used, unreadable newer ones are reported by name, and a run directory whose checkpoints are
all unreadable, or were written by another model or optimizer, raises ``CheckpointError``
instead of starting over. The global batch size is saved too: under the default strategy,
where the input position is restored, a changed batch size is a ``CheckpointError`` saying
what changed; where the input is replayed it works, with a warning.

The training ``step`` counts every step run (including skipped ones) and numbers the
checkpoints; ``optimizer.iterations`` counts applied updates and drives the learning-rate
schedule.
"""

import logging
import os

import keras
import tensorflow as tf

from keras_cvx.losses.replicas import LOSS_NORMALIZERS
from keras_cvx.training.checkpoints import CheckpointError, TrainingCheckpoint, checkpoint_candidates, is_chief
from keras_cvx.training.progress import TrainingProgress
from keras_cvx.training.summaries import ScalarWriter
from keras_cvx.validation import PADDING_LABEL, require_positive, require_positive_int

logger = logging.getLogger(__name__)

# The start of the run-time label check's message.
_BAD_LABELS = "Class ids must be in"

# Bits of the per-step status: what was not finite.
_LOSS, _GRADIENTS, _STATE = 1, 2, 4


class NonFiniteLossError(RuntimeError):
    """Training stopped: too many consecutive steps had a non-finite loss, gradient or state."""


def _describe(status):
    parts = [name for bit, name in ((_LOSS, "the loss"), (_GRADIENTS, "gradients"), (_STATE, "the layer state "
             "(e.g. BatchNorm statistics)")) if status & bit]
    return " and ".join(parts)


def _all_finite(tensors):
    finite = tf.constant(True)
    for t in tensors:
        finite = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(t)))
    return finite


def _is_float(variable):
    return keras.backend.is_float_dtype(variable.dtype)


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def use_xla(jit_compile, model):
    """Whether the ``Trainer`` compiles ``model``'s step with XLA: ``jit_compile`` when it is a
    bool; for ``"auto"``: True when TensorFlow sees a GPU or TPU, else the model class's
    ``xla_on_cpu`` (True when it has none; module docstring)."""
    if isinstance(jit_compile, bool):
        return jit_compile
    if jit_compile != "auto":
        raise ValueError(f"`jit_compile` must be True, False or 'auto', got {jit_compile!r}.")
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        return True
    return bool(getattr(type(model), "xla_on_cpu", True))


class Trainer:
    """Trains ``model`` with ``optimizer`` under ``strategy`` (see the module docstring).

    Under every strategy a step applies the gradient of the global batch's loss: N replicas
    or workers train exactly as one process on the same global batch, and the learning rate
    is the one for that global batch size.

    Create the model and the optimizer inside ``strategy.scope()`` (after setting the dtype
    policy). An unbuilt model is built on zeros shaped like one example of the dataset.

    Args:
        model: a ``keras.Model`` implementing ``compute_loss(x, y, y_pred, training=True)``
            (optionally ``loss_normalizers(y) -> dict`` of counts to sum over replicas).
        optimizer: a Keras optimizer (a schedule as learning rate is evaluated on
            ``optimizer.iterations``).
        strategy: a ``tf.distribute.Strategy``; default: the current one.
        model_dir: run directory for checkpoints and TensorBoard scalars, or ``None``.
        jit_compile: compile the per-replica forward+backward with XLA: True, False, or
            ``"auto"`` (default; ``use_xla``: XLA on a GPU/TPU, on a CPU unless the model's
            class sets ``xla_on_cpu = False``; module docstring).
        clipnorm: clip the global gradient to this global norm, or ``None``.
        checkpoint_every: save a checkpoint every this many steps (and at the end).
        max_checkpoints: checkpoints kept.
        resume: restore the newest checkpoint of ``model_dir`` before training.
        eval_fn: ``callable(model, step) -> dict`` of numbers, run on every worker every
            ``eval_every`` steps (and at the end); the numbers go to the progress bar and
            TensorBoard (``eval/``).
        eval_every: see ``eval_fn``.
        log_every: update the progress bar and TensorBoard every this many steps.
        max_consecutive_nonfinite: stop with ``NonFiniteLossError`` after this many skipped
            non-finite steps in a row.
        verbose: 0 silent, 1 progress bar, 2 one line per update.

    Example:

    ```python
    import keras, numpy as np, tensorflow as tf
    from keras_cvx.training import Trainer

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = np.ones((8, 4), "float32"), np.zeros((8,), "int32")
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
    result = Trainer(model, keras.optimizers.SGD(0.1), verbose=0).fit(dataset, steps=2)
    assert result["step"] == 2
    ```
    """

    def __init__(
        self,
        model,
        optimizer,
        strategy=None,
        model_dir=None,
        jit_compile="auto",
        clipnorm=None,
        checkpoint_every=100,
        max_checkpoints=3,
        resume=True,
        eval_fn=None,
        eval_every=None,
        log_every=10,
        max_consecutive_nonfinite=5,
        verbose=1,
    ):
        self.strategy = strategy or tf.distribute.get_strategy()
        self.model = model
        self.model_dir = model_dir
        self.jit_compile = use_xla(jit_compile, model)
        self.clipnorm = None if clipnorm is None else require_positive("clipnorm", clipnorm)
        self.checkpoint_every = require_positive_int("checkpoint_every", checkpoint_every)
        self.max_checkpoints = require_positive_int("max_checkpoints", max_checkpoints)
        self.resume = bool(resume)
        if eval_fn is not None and not callable(eval_fn):
            raise ValueError(f"`eval_fn` must be callable(model, step) -> dict, got {eval_fn!r}.")
        self.eval_fn = eval_fn
        self.eval_every = None if eval_every is None else require_positive_int("eval_every", eval_every)
        self.log_every = require_positive_int("log_every", log_every)
        self.max_consecutive_nonfinite = require_positive_int("max_consecutive_nonfinite", max_consecutive_nonfinite)
        self.verbose = verbose
        self.is_chief = is_chief(self.strategy)
        with self.strategy.scope():
            if model.dtype_policy.name == "mixed_float16" and not isinstance(
                optimizer, keras.optimizers.LossScaleOptimizer
            ):
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            self.optimizer = optimizer
            self.step = tf.Variable(
                0, dtype=tf.int64, trainable=False, name="step",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
            self.skipped_steps = tf.Variable(
                0, dtype=tf.int64, trainable=False, name="skipped_steps",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
            # the global batch size the checkpoints were written with (checked on resume)
            self._checkpoint_batch_size = tf.Variable(
                0, dtype=tf.int64, trainable=False, name="global_batch_size",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
        self._forward_backward = tf.function(self._forward_backward_fn, jit_compile=self.jit_compile)
        self._loss_normalizers = None
        if callable(getattr(model, "loss_normalizers", None)):
            # Not XLA: an XLA-compiled function before the step's collectives desynchronises them
            # across MirroredStrategy's CPU replicas ("Shape mismatch in the collective instance").
            self._loss_normalizers = tf.function(model.loss_normalizers)
        self._train_step = tf.function(self._train_step_fn)

    @property
    def _loss_scaled(self):
        return isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)

    @property
    def _state_variables(self):
        """The model's non-trainable variables: state its layers may update in the forward pass."""
        return self.model.non_trainable_variables

    def _forward_backward_fn(self, x, y, sample_weight):
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            # Assignments (BatchNorm statistics, ...) are collected, not applied: they are
            # committed by the trainer after the finite check.
            with keras.StatelessScope(collect_losses=True) as scope:
                y_pred = self.model(x, training=True)
                if hasattr(self.model, "loss_terms"):
                    terms = {k: tf.cast(v, tf.float32)
                             for k, v in self.model.loss_terms(y, y_pred, sample_weight).items()}
                    loss = tf.add_n(list(terms.values()))
                else:
                    terms = {}
                    loss = self.model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                                   training=True)
            loss = tf.cast(loss, tf.float32)
            scaled = self.optimizer.scale_loss(loss) if self._loss_scaled else loss
        grads = tape.gradient(scaled, variables)
        # a variable the loss does not reach gets a zero gradient (it still sees weight decay)
        grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g) for g, v in zip(grads, variables)]
        # {index in _state_variables: new value} of the variables the step assigned (frozen
        # weights are not assigned, and are neither reduced nor rewritten)
        state = {}
        for i, v in enumerate(self._state_variables):
            value = scope.get_current_value(v)
            if value is not None:
                state[i] = tf.convert_to_tensor(value)
        return loss, terms, grads, state

    def _replica_contribution(self, state):
        """What each replica adds to the SUM all-reduce so that it yields the reduced state:
        floating-point state divided by the replica count (the sum is the replicas' mean), or
        for ``aggregation="sum"`` variables the increment (old value + sum of increments).
        Integer state (seed counters) stays per replica and is not reduced."""
        replicas = self.strategy.num_replicas_in_sync
        contribution = {}
        for i, value in state.items():
            v = self._state_variables[i]
            if _is_float(v):
                contribution[i] = value - _tf_variable(v) if v.aggregation == "sum" else value / replicas
        return contribution

    def _label_bound(self, y):
        """``(labels, num_classes, padding)`` to check in ``y``, or ``None``: ``y["labels"]``
        (or an integer ``y``) of a model with an integer ``num_classes`` (every keras_cvx model;
        padding ``PADDING_LABEL``), or the integer ``y`` of a model compiled with
        ``SparseCategoricalCrossentropy`` (its output's last dimension; padding its
        ``ignore_class``)."""
        num_classes = getattr(self.model, "num_classes", None)
        if isinstance(num_classes, int) and not isinstance(num_classes, bool):
            if isinstance(y, dict) and "labels" in y:
                return y["labels"], num_classes, PADDING_LABEL
            if tf.is_tensor(y) and y.dtype.is_integer:
                return y, num_classes, PADDING_LABEL
            return None
        loss = getattr(self.model, "loss", None)
        sparse = loss == "sparse_categorical_crossentropy" or isinstance(
            loss, keras.losses.SparseCategoricalCrossentropy)
        outputs = getattr(self.model, "outputs", None)
        if sparse and tf.is_tensor(y) and y.dtype.is_integer and outputs and len(outputs) == 1:
            classes = outputs[0].shape[-1]
            return (y, classes, getattr(loss, "ignore_class", None)) if classes else None
        return None

    def _checked_labels(self, y):
        """``y`` after a run-time check (outside XLA, before anything is computed or committed)
        that its class ids are in ``[0, num_classes)`` or ``PADDING_LABEL``: an out-of-range id
        would be clamped silently by XLA's gather."""
        bound = self._label_bound(y)
        if bound is None:
            return y
        labels, num_classes, padding = bound
        labels = tf.cast(labels, tf.int64)
        bad = tf.logical_or(labels < 0, labels >= num_classes)
        if padding is not None:
            bad = tf.logical_and(bad, tf.not_equal(labels, padding))
        allowed = f"[0, {num_classes}) for num_classes={num_classes}" + (
            "" if padding is None else f" or {padding} for padding")
        check = tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(bad)),
            [f"{_BAD_LABELS} {allowed}; the batch of step", self.step + 1, "holds",
             tf.boolean_mask(labels, bad)],
            summarize=10,
        )
        with tf.control_dependencies([check]):
            return tf.nest.map_structure(tf.identity, y)

    def _replica_step(self, x, y, sample_weight):
        context = tf.distribute.get_replica_context()
        y = self._checked_labels(y)
        if self._loss_normalizers is not None and isinstance(y, dict):
            counts = self._loss_normalizers(y)
            counts = context.all_reduce(tf.distribute.ReduceOp.SUM, counts)
            y = dict(y, **{LOSS_NORMALIZERS: counts})
        loss, terms, grads, state = self._forward_backward(x, y, sample_weight)
        contribution = self._replica_contribution(state)
        # One all-reduce (collectives must run in the same order on every replica).
        loss, terms, grads, reduced = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                                         [loss, terms, grads, contribution])
        for i, total in reduced.items():
            v = self._state_variables[i]
            state[i] = total + _tf_variable(v) if v.aggregation == "sum" else total
        grads = [tf.cast(g, tf.float32) for g in grads]
        float_state = [value for i, value in state.items() if _is_float(self._state_variables[i])]
        status = (
            tf.where(tf.math.is_finite(loss), 0, _LOSS)
            + tf.where(_all_finite(grads), 0, _GRADIENTS)
            + tf.where(_all_finite(float_state), 0, _STATE)
        )
        if self.clipnorm is not None:
            scale = tf.cast(self.optimizer.dynamic_scale, tf.float32) if self._loss_scaled else 1.0
            norm = tf.linalg.global_norm(grads) / scale
            factor = self.clipnorm / tf.maximum(norm, self.clipnorm)
            factor = tf.where(tf.math.is_finite(factor), factor, 0.0)
            grads = [g * factor for g in grads]
        context.merge_call(self._commit_or_skip, args=(grads, state, status == 0))
        return loss, terms, status

    def _commit_or_skip(self, strategy, grads, state, finite):
        finite = strategy.experimental_local_results(finite)[0]

        def commit():
            strategy.extended.call_for_each_replica(self._apply_on_replica, args=(grads,))
            for i, value in state.items():
                strategy.extended.update(_tf_variable(self._state_variables[i]), lambda v, x: v.assign(x),
                                         args=(value,), group=False)

        def skip():
            self.skipped_steps.assign_add(1)
            if self._loss_scaled:
                self.optimizer._stateful_handle_non_finite_grads()

        tf.cond(finite, commit, skip)

    def _apply_on_replica(self, grads):
        variables = self.model.trainable_variables
        grads = [g / self.strategy.num_replicas_in_sync for g in grads]
        if self._loss_scaled:
            # Unscales, applies the inner optimizer and grows the scale (Keras's finite branch).
            self.optimizer._stateful_handle_finite_grads(grads, variables)
        else:
            self.optimizer.apply(grads, variables)

    def _train_step_fn(self, iterator):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(next(iterator))
        loss, terms, status = self.strategy.run(self._replica_step, args=(x, y, sample_weight))
        self.step.assign_add(1)
        local = self.strategy.experimental_local_results
        return local(loss)[0], {k: local(v)[0] for k, v in terms.items()}, local(status)[0]

    def _build(self, dataset):
        x_spec = dataset.element_spec[0]
        if not self.model.built:
            if any(None in s.shape.as_list()[1:] for s in tf.nest.flatten(x_spec)):
                raise ValueError(
                    f"`model` is not built and the dataset's inputs {x_spec} have unknown "
                    "dimensions: call the model once on a batch before `fit`."
                )
            dummy = tf.nest.map_structure(lambda s: tf.zeros([1] + s.shape.as_list()[1:], s.dtype), x_spec)
            with self.strategy.scope():
                self.model(dummy)
        if not self.optimizer.built:
            with self.strategy.scope():
                self.optimizer.build(self.model.trainable_variables)

    def _global_batch_size(self, dataset):
        batch = tf.nest.flatten(dataset.element_spec[0])[0].shape[0]
        replicas = self.strategy.num_replicas_in_sync
        if batch is None or batch % replicas:
            raise ValueError(
                f"`dataset` must be batched with a static global batch size divisible by the "
                f"{replicas} replicas (use `batch(global_batch, drop_remainder=True)`), got "
                f"batch dimension {batch!r}."
            )
        return batch

    def fit(self, dataset, steps):
        """Trains until the training step reaches ``steps`` (resuming from ``model_dir``).

        Args:
            dataset: a ``tf.data.Dataset`` of ``(x, y)`` or ``(x, y, sample_weight)``
                batched with the global batch size
                (static, divisible by the replica count); repeat it for long runs.
            steps: the step the run ends at.

        Returns:
            dict with ``step``, ``loss`` (last step, global-batch mean), ``skipped_steps``
            and the last evaluation results.
        """
        steps = require_positive_int("steps", steps)
        global_batch = self._global_batch_size(dataset)
        self._build(dataset)
        distributed = self.strategy.experimental_distribute_dataset(dataset)
        # The default strategy hands back the dataset itself, whose iterator is trackable;
        # the iterators of distributed datasets are not and are rebuilt after restoring.
        iterator_saved = isinstance(distributed, tf.data.Dataset)
        iterator = iter(distributed) if iterator_saved else None
        checkpoint = None
        if self.model_dir is not None:
            trackables = dict(
                model=self.model, optimizer=self.optimizer, step=self.step, skipped_steps=self.skipped_steps,
                global_batch_size=self._checkpoint_batch_size,
            )
            if iterator_saved:
                trackables["iterator"] = iterator
            checkpoint = TrainingCheckpoint(self.model_dir, self.strategy, self.max_checkpoints, **trackables)
            if self.resume and checkpoint.restore_latest() is not None:
                self._check_batch_size(global_batch, iterator_saved)
            elif not self.resume and checkpoint_candidates(self.model_dir):
                logger.warning("resume=False: %r holds checkpoints up to %s; training starts over and its "
                               "checkpoints replace them as they are written.", self.model_dir,
                               os.path.basename(checkpoint_candidates(self.model_dir)[0]))
            self._checkpoint_batch_size.assign(global_batch)
        if iterator is None:
            # Replays the input up to the restored step (one iterator only: a seeded
            # reshuffling pipeline advances its seed with every iterator made from it).
            start = int(self.step.numpy())
            iterator = iter(self.strategy.experimental_distribute_dataset(dataset.skip(start) if start else dataset))
        step = int(self.step.numpy())
        results = dict(step=step, loss=None, skipped_steps=int(self.skipped_steps.numpy()))
        if step >= steps:
            logger.warning("The restored checkpoint is at step %d, at or past the requested %d steps: "
                           "nothing to train (ask for more steps to continue).", step, steps)
            return results
        writer = ScalarWriter(self.model_dir, enabled=self.is_chief)
        progress = TrainingProgress(steps, global_batch, verbose=self.verbose if self.is_chief else 0)
        progress.images_per_second(step)
        loss, consecutive_nonfinite, end_of_data = float("nan"), 0, False
        first_step = step
        while step < steps:
            try:
                loss, terms, status = self._train_step(iterator)
            except (ValueError, TypeError) as error:
                if step != first_step:  # tracing happens on the first step of a fit call
                    raise
                raise type(error)(
                    f"The first training step failed while tracing the model on the dataset's inputs "
                    f"{dataset.element_spec[0]} (the first dimension is the global batch; is the dataset batched?): "
                    f"{error}") from error
            except tf.errors.InvalidArgumentError as error:
                if _BAD_LABELS not in error.message:
                    raise
                detail = error.message[error.message.index(_BAD_LABELS):].split("\n")[0].replace("] [", " ").rstrip("]")
                raise ValueError(f"Bad labels, nothing was trained on this batch: {detail}") from error
            except tf.errors.OutOfRangeError:
                end_of_data = True
                logger.warning("The dataset ended after step %d of %d; saving and stopping (repeat the "
                               "dataset to train longer).", step, steps)
                if checkpoint is not None:
                    self._save(checkpoint, step)
                break
            step += 1
            status = int(status)
            counted = status & (_LOSS | _STATE) if self._loss_scaled else status
            consecutive_nonfinite = consecutive_nonfinite + 1 if counted else 0
            if consecutive_nonfinite >= self.max_consecutive_nonfinite:
                raise NonFiniteLossError(
                    f"Training stopped at step {step}: {consecutive_nonfinite} consecutive steps had non-finite "
                    f"{_describe(status)} and were skipped (nothing was changed or saved by them). Lower the "
                    "learning rate, clip gradients (`clipnorm`) or check the input data for NaN/Inf."
                )
            last = step == steps
            if step % self.log_every == 0 or last:
                scalars = {
                    "loss": float(loss),
                    "images_per_second": progress.images_per_second(step),
                    "learning_rate": float(keras.ops.convert_to_numpy(self.optimizer.learning_rate)),
                    "skipped_steps": int(self.skipped_steps.numpy()),
                }
                scalars.update({name: float(value) for name, value in terms.items()})
                if self._loss_scaled:
                    scalars["loss_scale"] = float(self.optimizer.dynamic_scale.numpy())
                writer.write(step, scalars)
                progress.update(step, scalars)
            if checkpoint is not None and (step % self.checkpoint_every == 0 or last):
                self._save(checkpoint, step)
            if self.eval_fn is not None and ((self.eval_every and step % self.eval_every == 0) or last):
                evaluation = {k: float(v) for k, v in dict(self.eval_fn(self.model, step)).items()}
                writer.write(step, evaluation, prefix="eval/")
                progress.update(step, evaluation)
                results.update(evaluation)
        results.update(step=step, loss=float(loss), skipped_steps=int(self.skipped_steps.numpy()),
                       end_of_data=end_of_data)
        return results

    def _check_batch_size(self, global_batch, iterator_saved):
        """A changed global batch size on resume: the saved input position (default strategy)
        is for the old batches, so that is an error; where the input is replayed it works."""
        saved = int(self._checkpoint_batch_size.numpy())
        if saved == global_batch:
            return
        message = (f"The checkpoint of step {int(self.step.numpy())} in {self.model_dir!r} was written with global "
                   f"batch size {saved}; this run's dataset has {global_batch}.")
        if iterator_saved:
            raise CheckpointError(
                f"{message} The saved input position holds batches of {saved}: resume with batch size {saved}, or "
                "pass resume=False or another model_dir to start over."
            )
        logger.warning("%s Continuing with %d (the input is replayed with dataset.skip(step), so the data seen "
                       "from here on differs from a run that kept %d).", message, global_batch, saved)

    def _save(self, checkpoint, step):
        """Writes a checkpoint unless a variable holds a non-finite value (then raises)."""
        bad = [v.path for v in self.model.variables + self.optimizer.variables
               if _is_float(v) and not bool(tf.reduce_all(tf.math.is_finite(_tf_variable(v))))]
        if bad:
            raise NonFiniteLossError(
                f"Not saving the checkpoint of step {step}: {len(bad)} variable(s) hold non-finite values "
                f"({', '.join(bad[:5])}); training diverged. The previous checkpoints are kept."
            )
        checkpoint.save(step)
