"""Runs for the distributed-equivalence tests: the same 3 training steps on the same global
batches, by ``Trainer`` under a strategy, or by a hand-written single-process
``tf.GradientTape`` step (the reference). Run as a script in a fresh process::

    python -m tests.training.distributed_runs MODE OUT_DIR [CONFIG ...]

MODE is ``reference`` (no strategy), ``default``, ``mirrored`` (2 logical CPUs) or
``multiworker`` (reads ``TF_CONFIG``); each CONFIG (``model:xla:precision:clip``, see
``config_name``) writes ``OUT_DIR/<MODE>[_<task>]/<CONFIG>.npz`` with the initial and final
variables (trainable, then non-trainable) and the loss of the last step; the workers also
checkpoint every step into ``OUT_DIR/checkpoints/<CONFIG>``.

The reference does what one process would do on the global batch: the loss of the global
batch (for a per-example mean, the mean over all examples; for SSD-NET the sum over all
images divided by all their positives), its gradient, and the optimizer update, with
clipping by Keras's ``global_clipnorm`` optimizer option and mixed_float16 loss scaling by
Keras's ``LossScaleOptimizer`` (which skips non-finite steps). With ``replicas = 2`` it normalises the
two halves of the batch separately (BatchNorm batch statistics of each half, as each
replica does) and keeps the mean of the halves' moving statistics; with BatchNorm-free
models that is the same as ``replicas = 1``.
"""

import os
import sys

import numpy as np

MODELS = ("plain", "batchnorm", "ssd_net")
"""``plain``: conv -> pool -> dense, BatchNorm-free, compiled with Keras's sparse categorical
cross-entropy (``model.compile(loss=...)``, the default ``compute_loss``); ``batchnorm``: the
same with a BatchNorm after the convolution; ``ssd_net``: SSD-NET on a ResNet-10 (BatchNorm)
at 64×64, whose loss is divided by the batch's positives."""

STEPS = 3
GLOBAL_BATCH = 4
LEARNING_RATE = {"plain": 0.1, "batchnorm": 0.1, "ssd_net": 0.01}
CLIPNORM = {"plain": 0.5, "batchnorm": 0.5, "ssd_net": 1.0}


def config_name(model, xla, precision, clip):
    return f"{model}:{int(xla)}:{precision}:{int(clip)}"


def parse_config(name):
    model, xla, precision, clip = name.split(":")
    return model, bool(int(xla)), precision, bool(int(clip))


def make_batches(model_name):
    """``STEPS`` distinct global batches (NumPy), the same in every process."""
    rng = np.random.default_rng(11)
    if model_name != "ssd_net":
        return [
            (rng.uniform(0, 255, (GLOBAL_BATCH, 12, 12, 3)).astype("float32"),
             rng.integers(0, 3, GLOBAL_BATCH).astype("int32"))
            for _ in range(STEPS)
        ]
    batches = []
    for _ in range(STEPS):
        images = rng.uniform(0, 255, (GLOBAL_BATCH, 64, 64, 3)).astype("float32")
        boxes = np.zeros((GLOBAL_BATCH, 3, 4), "float32")
        labels = np.full((GLOBAL_BATCH, 3), -1, "int32")
        for b in range(GLOBAL_BATCH):
            for m in range(1 + b % 3):  # 1, 2, 3, 1 boxes: unequal positives per replica
                w, h = rng.uniform(10, 50, 2)
                x1, y1 = rng.uniform(0, 64 - w), rng.uniform(0, 64 - h)
                boxes[b, m] = [x1, y1, x1 + w, y1 + h]
                labels[b, m] = rng.integers(0, 3)
        batches.append((images, {"boxes": boxes, "labels": labels}))
    return batches


def build_model(model_name):
    """The model with deterministic trainable weights (from a seeded NumPy generator, so that
    every process and strategy starts from the same values)."""
    import keras

    if model_name != "ssd_net":
        batchnorm = [keras.layers.BatchNormalization(momentum=0.5)] if model_name == "batchnorm" else []
        model = keras.Sequential([
            keras.Input((12, 12, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(6, 3),
            *batchnorm,
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3),
        ])
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    else:
        from keras_cvx.layers.ssd_decoder import SSDDecoder
        from keras_cvx.models.ssd_net import SSDNet

        model = SSDNet(3, image_size=64, backbone="resnet10", width_multiplier=0.125, fusion_channels=8,
                       decoder=SSDDecoder(max_detections=5))
    rng = np.random.default_rng(5)
    for v in model.trainable_variables:
        shape = tuple(v.shape)
        if len(shape) >= 2:
            value = rng.normal(0.0, np.sqrt(1.0 / np.prod(shape[:-1])), shape)
        else:
            value = np.asarray(v.numpy()) + rng.normal(0.0, 0.05, shape)
        v.assign(value.astype("float32"))
    return model


def make_optimizer(model_name, precision, global_clipnorm=None):
    """SGD with momentum; under ``mixed_float16`` wrapped in Keras's ``LossScaleOptimizer``
    (initial scale 2^8, so that the few steps are not all overflow skips)."""
    import keras

    optimizer = keras.optimizers.SGD(LEARNING_RATE[model_name], momentum=0.9, global_clipnorm=global_clipnorm)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=2.0**8)
    return optimizer


def variables(model):
    return [np.asarray(v.numpy()) for v in model.trainable_variables + model.non_trainable_variables]


def run_trainer(config, strategy, model_dir=None):
    import keras
    import tensorflow as tf

    from keras_cvx.training.trainer import Trainer

    model_name, xla, precision, clip = parse_config(config)
    keras.config.set_dtype_policy(precision)
    batches = make_batches(model_name)
    dataset = tf.data.Dataset.from_tensor_slices(
        tf.nest.map_structure(lambda *parts: np.stack(parts), *batches)
    )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = dataset.with_options(options)
    with strategy.scope():
        model = build_model(model_name)
        optimizer = make_optimizer(model_name, precision)
    initial = variables(model)
    trainer = Trainer(model, optimizer, strategy, jit_compile=xla, verbose=0, model_dir=model_dir,
                      checkpoint_every=1, clipnorm=CLIPNORM[model_name] if clip else None)
    result = trainer.fit(dataset, STEPS)
    return initial, variables(model), [result["loss"]], strategy.num_replicas_in_sync


def reference_loss(model_name, model, x, y, y_pred):
    """One process's loss of the global batch, written without the Trainer."""
    import keras
    from keras import ops

    if model_name != "ssd_net":
        per_example = keras.losses.sparse_categorical_crossentropy(y, ops.cast(y_pred, "float32"), from_logits=True)
        return ops.mean(per_example)
    return model.compute_loss(x=x, y=y, y_pred=y_pred)  # no strategy: normalised by all positives


def run_reference(config, replicas):
    """The hand-written single-process steps (module docstring)."""
    import keras
    import tensorflow as tf
    from keras import ops

    model_name, xla, precision, clip = parse_config(config)
    keras.config.set_dtype_policy(precision)
    model = build_model(model_name)
    # Clipping and loss scaling by Keras's own optimizer options, not by the Trainer's code.
    optimizer = make_optimizer(model_name, precision, CLIPNORM[model_name] if clip else None)
    optimizer.build(model.trainable_variables)
    state = model.non_trainable_variables
    part = GLOBAL_BATCH // replicas

    # a graph, as the Trainer's steps (eager and graph float16 kernels round differently), compiled
    # by XLA when the Trainer's is (XLA fuses and reorders float32 sums: ~2e-6 apart otherwise)
    @tf.function(jit_compile=xla)
    def loss_and_gradients(x, y):
        with tf.GradientTape() as tape:
            predictions, new_state = [], []
            for r in range(replicas):
                old = [tf.identity(v.value) for v in state]
                predictions.append(model(x[r * part:(r + 1) * part], training=True))  # assigns this half's
                new_state.append([tf.identity(v.value) for v in state])                # BatchNorm statistics
                for v, value in zip(state, old):
                    v.assign(value)
            y_pred = tf.nest.map_structure(lambda *p: ops.concatenate(p, axis=0), *predictions)
            loss = ops.cast(reference_loss(model_name, model, x, y, y_pred), "float32")
            scaled = optimizer.scale_loss(loss)  # times the loss scale under mixed_float16
        return loss, tape.gradient(scaled, model.trainable_variables), new_state

    initial, losses = variables(model), []
    for x, y in make_batches(model_name):
        loss, grads, new_state = loss_and_gradients(x, y)
        # LossScaleOptimizer: unscale, skip the step (and halve the scale) when not finite
        finite = all(np.isfinite(g.numpy()).all() for g in grads) and np.isfinite(float(loss))
        optimizer.apply(grads, model.trainable_variables)
        if finite:
            for v, values in zip(state, zip(*new_state)):
                v.assign(np.mean([value.numpy() for value in values], axis=0))
        losses.append(float(loss))
    return initial, variables(model), losses[-1:]


def _save(path, initial, final, losses, replicas):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arrays = {f"initial_{i}": a for i, a in enumerate(initial)}
    arrays.update({f"final_{i}": a for i, a in enumerate(final)})
    np.savez(path, losses=np.asarray(losses, "float64"), replicas=replicas, count=len(final), **arrays)


def load(path):
    """``(initial, final, losses, replicas)`` of a saved run."""
    data = np.load(path)
    count = int(data["count"])
    return ([data[f"initial_{i}"] for i in range(count)], [data[f"final_{i}"] for i in range(count)],
            list(data["losses"]), int(data["replicas"]))


def main(mode, out_dir, configs):
    import tensorflow as tf

    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    folder, strategy = mode, None
    if mode == "multiworker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        folder = f"multiworker_{strategy.cluster_resolver.task_id}"
    elif mode == "mirrored":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    elif mode == "default":
        strategy = tf.distribute.get_strategy()
    for config in configs:
        if mode == "reference":
            for replicas in (1, 2):
                initial, final, losses = run_reference(config, replicas)
                _save(os.path.join(out_dir, f"reference{replicas}", config.replace(":", "_") + ".npz"),
                      initial, final, losses, replicas)
        else:
            # the workers share a model_dir: the chief writes the checkpoints there
            model_dir = os.path.join(out_dir, "checkpoints", config.replace(":", "_")) if mode == "multiworker" else None
            initial, final, losses, replicas = run_trainer(config, strategy, model_dir)
            _save(os.path.join(out_dir, folder, config.replace(":", "_") + ".npz"), initial, final, losses, replicas)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
