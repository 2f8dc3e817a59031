"""``Trainer``: a custom ``tf.distribute`` training loop for any Keras model that implements
``compute_loss`` (every keras_cvx detector and classifier).

Why not ``model.fit``: Keras 3 ``fit`` fails under ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585) and ``fit(jit_compile=True)`` fails under ``MirroredStrategy`` on
several CPU devices. Here one step is::

    strategy.run(replica_step)                       # per replica
        loss, grads = forward_backward(x, y)         # tf.function(jit_compile=True): XLA
        loss, grads = replica_ctx.all_reduce(SUM)    # gradient all-reduce, outside XLA
        unscale (mixed_float16), clip by global norm, finite check (same on every replica)
        replica_ctx.merge_call(apply_or_skip)        # cross-replica: tf.cond(finite, ...)
            apply: call_for_each_replica(optimizer.apply(grads / num_replicas))
            skip:  skipped_steps += 1 (and the loss scale is halved)

Loss scaling for global-batch semantics: ``compute_loss`` returns the loss averaged over
the replica's examples; the trainer multiplies it by ``1 / num_replicas_in_sync``, so the
SUM all-reduce of losses and gradients is the mean over the global batch. This needs equal
per-replica batches: batch the dataset with the global batch size and
``drop_remainder=True``. Losses normalised by a per-replica count (detectors divide by
their positives) give the mean of the replicas' normalised losses, not a loss normalised
by the global count (as Detectron2 and TF Model Garden without a cross-replica sum of
positives); 1 device and N replicas agree exactly only for per-example means.

Keras ``Loss`` objects with the default ``"sum_over_batch_size"`` reduction already divide
by ``num_replicas_in_sync`` under a strategy (``scale_loss_for_distribution``); models must
not use them inside ``compute_loss`` (use ``reduction="sum"`` and divide by the count, or
``keras.ops``), or the loss is divided twice.

Keras 3 optimizers under ``tf.distribute``: ``optimizer.apply`` called in replica context
all-reduces (SUM) the gradients it is given before the update, and ``maybe_merge_call``
fails when it is called in cross-replica context. The gradients are therefore reduced once
by the trainer (clipping and the finite check need the global gradient) and handed to
``apply`` divided by ``num_replicas_in_sync``, so the optimizer's own SUM restores them
(exactly when the replica count is a power of two, within one rounding otherwise). This
costs a second all-reduce; it is the price of not touching optimizer internals. The update
runs inside ``tf.cond`` in cross-replica context, the pattern Keras's own
``LossScaleOptimizer`` uses.

Mixed precision: under a ``mixed_float16`` model policy the optimizer is wrapped in
``keras.optimizers.LossScaleOptimizer`` (dynamic loss scaling; a non-finite step halves
the scale); ``mixed_bfloat16`` needs no scaling. The loss is computed in float32.

Resume: the newest checkpoint of ``model_dir`` (model, optimizer, step counters and, where
the strategy's input iterator is trackable -- the default strategy -- the iterator) is
restored; when the iterator is not trackable (``MirroredStrategy``,
``MultiWorkerMirroredStrategy`` in TF 2.21) the input is replayed with
``dataset.skip(step)``, which gives the same batches for a deterministic pipeline.

The training ``step`` counts every step run (including skipped ones) and numbers the
checkpoints; ``optimizer.iterations`` counts applied updates and drives the learning-rate
schedule.
"""

import tensorflow as tf
import keras

from keras_cvx.training.checkpoints import TrainingCheckpoint, is_chief
from keras_cvx.training.progress import TrainingProgress
from keras_cvx.training.summaries import ScalarWriter
from keras_cvx.validation import require_positive, require_positive_int


class Trainer:
    """Trains ``model`` with ``optimizer`` under ``strategy``.

    Create the model and the optimizer inside ``strategy.scope()`` (after setting the dtype
    policy). An unbuilt model is built on zeros shaped like one example of the dataset.

    Args:
        model: a ``keras.Model`` implementing ``compute_loss(x, y, y_pred, training=True)``.
        optimizer: a Keras optimizer (a schedule as learning rate is evaluated on
            ``optimizer.iterations``).
        strategy: a ``tf.distribute.Strategy``; default: the current one.
        model_dir: run directory for checkpoints and TensorBoard scalars, or ``None``.
        jit_compile: compile the per-replica forward+backward with XLA.
        clipnorm: clip the global gradient to this global norm, or ``None``.
        checkpoint_every: save a checkpoint every this many steps (and at the end).
        max_checkpoints: checkpoints kept.
        resume: restore the newest checkpoint of ``model_dir`` before training.
        eval_fn: ``callable(model, step) -> dict`` of numbers, run on every worker every
            ``eval_every`` steps (and at the end); the numbers go to the progress bar and
            TensorBoard (``eval/``).
        eval_every: see ``eval_fn``.
        log_every: update the progress bar and TensorBoard every this many steps.
        verbose: 0 silent, 1 progress bar, 2 one line per update.
    """

    def __init__(
        self,
        model,
        optimizer,
        strategy=None,
        model_dir=None,
        jit_compile=True,
        clipnorm=None,
        checkpoint_every=100,
        max_checkpoints=3,
        resume=True,
        eval_fn=None,
        eval_every=None,
        log_every=10,
        verbose=1,
    ):
        self.strategy = strategy or tf.distribute.get_strategy()
        self.model = model
        self.model_dir = model_dir
        self.jit_compile = bool(jit_compile)
        self.clipnorm = None if clipnorm is None else require_positive("clipnorm", clipnorm)
        self.checkpoint_every = require_positive_int("checkpoint_every", checkpoint_every)
        self.max_checkpoints = require_positive_int("max_checkpoints", max_checkpoints)
        self.resume = bool(resume)
        if eval_fn is not None and not callable(eval_fn):
            raise ValueError(f"`eval_fn` must be callable(model, step) -> dict, got {eval_fn!r}.")
        self.eval_fn = eval_fn
        self.eval_every = None if eval_every is None else require_positive_int("eval_every", eval_every)
        self.log_every = require_positive_int("log_every", log_every)
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
        self._forward_backward = tf.function(self._forward_backward_fn, jit_compile=self.jit_compile)
        self._train_step = tf.function(self._train_step_fn)

    @property
    def _loss_scaled(self):
        return isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)

    def _forward_backward_fn(self, x, y, sample_weight):
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            y_pred = self.model(x, training=True)
            loss = self.model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            loss = tf.cast(loss, tf.float32) / self.strategy.num_replicas_in_sync
            scaled = self.optimizer.scale_loss(loss) if self._loss_scaled else loss
        grads = tape.gradient(scaled, variables)
        # a variable the loss does not reach gets a zero gradient (it still sees weight decay)
        grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g) for g, v in zip(grads, variables)]
        return loss, grads

    def _replica_step(self, x, y, sample_weight):
        loss, grads = self._forward_backward(x, y, sample_weight)
        context = tf.distribute.get_replica_context()
        loss, grads = context.all_reduce(tf.distribute.ReduceOp.SUM, [loss, grads])
        grads = [tf.cast(g, tf.float32) for g in grads]
        finite = tf.math.is_finite(loss)
        for g in grads:
            finite = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(g)))
        if self.clipnorm is not None:
            scale = tf.cast(self.optimizer.dynamic_scale, tf.float32) if self._loss_scaled else 1.0
            norm = tf.linalg.global_norm(grads) / scale
            factor = self.clipnorm / tf.maximum(norm, self.clipnorm)
            factor = tf.where(tf.math.is_finite(factor), factor, 0.0)
            grads = [g * factor for g in grads]
        context.merge_call(self._apply_or_skip, args=(grads, finite))
        return loss

    def _apply_or_skip(self, strategy, grads, finite):
        finite = strategy.experimental_local_results(finite)[0]

        def apply():
            strategy.extended.call_for_each_replica(self._apply_on_replica, args=(grads,))

        def skip():
            self.skipped_steps.assign_add(1)
            if self._loss_scaled:
                self.optimizer._stateful_handle_non_finite_grads()

        tf.cond(finite, apply, skip)

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
        loss = self.strategy.run(self._replica_step, args=(x, y, sample_weight))
        self.step.assign_add(1)
        return self.strategy.experimental_local_results(loss)[0]

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
                model=self.model, optimizer=self.optimizer, step=self.step, skipped_steps=self.skipped_steps
            )
            if iterator_saved:
                trackables["iterator"] = iterator
            checkpoint = TrainingCheckpoint(self.model_dir, self.strategy, self.max_checkpoints, **trackables)
            if self.resume:
                checkpoint.restore_latest()
        if iterator is None:
            # Replays the input up to the restored step (one iterator only: a seeded
            # reshuffling pipeline advances its seed with every iterator made from it).
            start = int(self.step.numpy())
            iterator = iter(self.strategy.experimental_distribute_dataset(dataset.skip(start) if start else dataset))
        writer = ScalarWriter(self.model_dir, enabled=self.is_chief)
        progress = TrainingProgress(steps, global_batch, verbose=self.verbose if self.is_chief else 0)
        step = int(self.step.numpy())
        progress.images_per_second(step)
        loss = tf.constant(float("nan"))
        results = {}
        while step < steps:
            loss = self._train_step(iterator)  # host syncs only at log/checkpoint/eval steps
            step += 1
            last = step == steps
            if step % self.log_every == 0 or last:
                scalars = {
                    "loss": float(loss),
                    "images_per_second": progress.images_per_second(step),
                    "learning_rate": float(keras.ops.convert_to_numpy(self.optimizer.learning_rate)),
                    "skipped_steps": int(self.skipped_steps.numpy()),
                }
                if self._loss_scaled:
                    scalars["loss_scale"] = float(self.optimizer.dynamic_scale.numpy())
                writer.write(step, scalars)
                progress.update(step, scalars)
            if checkpoint is not None and (step % self.checkpoint_every == 0 or last):
                checkpoint.save(step)
            if self.eval_fn is not None and ((self.eval_every and step % self.eval_every == 0) or last):
                evaluation = {k: float(v) for k, v in dict(self.eval_fn(self.model, step)).items()}
                writer.write(step, evaluation, prefix="eval/")
                progress.update(step, evaluation)
                results.update(evaluation)
        results.update(step=step, loss=float(loss), skipped_steps=int(self.skipped_steps.numpy()))
        return results
