"""Tests for keras_cvx.training.trainer.

The default strategy, MirroredStrategy over 2 logical CPUs and 2 MultiWorkerMirroredStrategy
workers on localhost, with and without XLA, clipping and mixed_float16 loss scaling, each
against the same hand-written single-process GradientTape step (``distributed_runs``);
non-finite steps change nothing (BatchNorm statistics included); clipping, mixed precision,
the evaluation hook and TensorBoard scalars; the end of a finite dataset."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from keras_cvx.losses.replicas import replica_share
from keras_cvx.training.trainer import NonFiniteLossError, Trainer
from tests.training import distributed_runs

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@keras.saving.register_keras_serializable(package="keras_cvx_tests")
class ToyClassifier(keras.Model):
    """Conv -> global pool -> dense; ``compute_loss`` is the replica's share of the
    global-batch mean cross-entropy (weighted mean with ``sample_weight``)."""

    def __init__(self, classes=3, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(4, 3, activation="relu")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.dense = keras.layers.Dense(classes)

    def call(self, x, training=False):
        return self.dense(self.pool(self.conv(x / 255.0)))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        logp = ops.log_softmax(ops.cast(y_pred, "float32"))
        nll = -ops.take_along_axis(logp, ops.expand_dims(y, -1), axis=-1)[:, 0]
        if sample_weight is None:
            return replica_share(ops.mean(nll))
        return replica_share(ops.sum(nll * sample_weight) / ops.sum(sample_weight))


def toy_data(batch=8, seed=0, size=16):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 3, batch).astype("int32")
    return x, y


def toy_dataset(global_batch=8, batches=4, seed=0):
    x, y = toy_data(global_batch * batches, seed)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(global_batch, drop_remainder=True).repeat()


def run_python(code, env=None, timeout=240):
    """Runs ``code`` in a fresh Python process at the repository root; returns stdout."""
    full_env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT, env=full_env,
        capture_output=True, text=True, timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def make_model(x, weights=None):
    model = ToyClassifier()
    model(x[:1])
    if weights is not None:
        model.set_weights(weights)
    return model


# ---------------------------------------------------------------- one process = N replicas = N workers

# model:xla:precision:clip -- the small models with and without XLA, float32 and mixed_float16,
# with and without clipping; SSD-NET (positives summed over replicas, BatchNorm), whose
# compilation dominates the run time, once. KERAS_CVX_FULL_GRID=1 runs every combination for
# every model (the table in the README's "Distributed training").
if os.environ.get("KERAS_CVX_FULL_GRID") == "1":
    DISTRIBUTED_CONFIGS = [
        distributed_runs.config_name(m, x, p, c) for m in distributed_runs.MODELS for x in (True, False)
        for p in ("float32", "mixed_float16") for c in (False, True)
    ]
else:
    DISTRIBUTED_CONFIGS = [
        distributed_runs.config_name(*c) for c in [
            ("plain", True, "float32", False), ("plain", False, "mixed_float16", True),
            ("batchnorm", True, "float32", True), ("batchnorm", False, "mixed_float16", False),
            ("ssd_net", False, "float32", True),
        ]
    ]
# Observed: float32 weights within 5e-7 of the reference (relative to the largest weight),
# mixed_float16 within 2e-4; the replica-count bug this guards against gave 0.5 of the update.
WEIGHT_TOLERANCE = {"float32": 2e-6, "mixed_float16": 2e-3}
# SSD-NET in float16 on 2 workers without XLA: 1.3e-4 after one step (the worker processes'
# float16 kernels round differently from the one-process graph), 2.1e-2 after three (hard-negative
# mining re-ranks anchors on such differences); documented in the README's table.
FLOAT16_WORKERS_TOLERANCE = {"ssd_net": 5e-2}


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_distributed(out):
    """Runs the reference, the default strategy, Mirrored (2 logical CPUs) and two localhost
    MultiWorkerMirrored workers, each in its own process, all at once, into ``out``."""
    out = str(out)
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-m", "tests.training.distributed_runs"]
    ports = [_free_port(), _free_port()]
    jobs = {}
    for mode in ("reference", "default", "mirrored"):
        jobs[mode] = (command + [mode, out] + DISTRIBUTED_CONFIGS, env)
    for index in range(2):
        tf_config = {"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                     "task": {"type": "worker", "index": index}}
        jobs[f"worker{index}"] = (command + ["multiworker", out] + DISTRIBUTED_CONFIGS,
                                  dict(env, TF_CONFIG=json.dumps(tf_config)))
    procs = {name: subprocess.Popen(cmd, cwd=REPO_ROOT, env=job_env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, (cmd, job_env) in jobs.items()}
    try:
        for name, proc in procs.items():
            _, stderr = proc.communicate(timeout=900)
            assert proc.returncode == 0, f"{name}: {stderr[-4000:]}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    return out


def _relative_difference(actual, expected):
    """max |actual - expected| / max |expected| over the tensors."""
    return max(float(np.max(np.abs(a - e))) / max(float(np.max(np.abs(e))), 1e-12) for a, e in zip(actual, expected))


def test_distributed_steps_equal_one_process_and_workers_agree(tmp_path):
    """One test for the one expensive set of runs (5 processes, ~100 s)."""
    out = run_distributed(tmp_path)
    for mode in ("default", "mirrored", "multiworker_0", "multiworker_1"):
        check_strategy_step_equals_hand_written_single_process_step(out, mode)
    check_workers_hold_identical_weights_and_batchnorm_statistics(out)


def check_strategy_step_equals_hand_written_single_process_step(distributed_runs_dir, mode):
    """3 Trainer steps on the same global batches equal 3 hand-written GradientTape steps of
    one process: weights, BatchNorm statistics and the loss (not only each other)."""
    rows = []
    for config in DISTRIBUTED_CONFIGS:
        model_name, xla, precision, clip = distributed_runs.parse_config(config)
        file_name = config.replace(":", "_") + ".npz"
        initial, final, losses, replicas = distributed_runs.load(os.path.join(distributed_runs_dir, mode, file_name))
        assert replicas == (1 if mode == "default" else 2)
        ref_initial, ref_final, ref_losses, _ = distributed_runs.load(
            os.path.join(distributed_runs_dir, f"reference{replicas}", file_name))
        for a, b in zip(initial, ref_initial):
            np.testing.assert_array_equal(a, b)
        # the tensors moved (BatchNorm statistics too), and the update is the reference's, not a
        # fraction of it: projection of the update on the reference update / its squared norm
        moved = [bool(np.any(r != i)) for r, i in zip(ref_final, ref_initial)]
        assert np.mean(moved) > 0.9, config
        update, reference_update = (np.concatenate([(w - i).ravel() for w, i in zip(ws, initial)])
                                    for ws in (final, ref_final))
        ratio = float(update @ reference_update / (reference_update @ reference_update))
        assert ratio == pytest.approx(1.0, abs=1e-2), (mode, config, ratio)
        tolerance = WEIGHT_TOLERANCE[precision]
        if precision == "mixed_float16" and mode.startswith("multiworker") and not xla:
            tolerance = FLOAT16_WORKERS_TOLERANCE.get(model_name, tolerance)
        difference = _relative_difference(final, ref_final)
        assert difference <= tolerance, (mode, config, difference)
        assert losses[-1] == pytest.approx(ref_losses[-1], rel=tolerance), (mode, config)
        rows.append(f"{mode:14s} {model_name:8s} xla={int(xla)} {precision:14s} clip={int(clip)} "
                    f"max relative weight difference {difference:.1e}")
    print("\n" + "\n".join(rows))


def check_workers_hold_identical_weights_and_batchnorm_statistics(distributed_runs_dir):
    """Both workers' variables, BatchNorm moving statistics included, are bit-identical, so
    any worker's checkpoint equals the chief's; the chief's checkpoint holds them and the
    other worker's temporary directory is gone."""
    for config in DISTRIBUTED_CONFIGS:
        name = config.replace(":", "_")
        _, chief, _, _ = distributed_runs.load(os.path.join(distributed_runs_dir, "multiworker_0", name + ".npz"))
        _, other, _, _ = distributed_runs.load(os.path.join(distributed_runs_dir, "multiworker_1", name + ".npz"))
        for a, b in zip(chief, other):
            np.testing.assert_array_equal(a, b)
        directory = os.path.join(distributed_runs_dir, "checkpoints", name)
        assert tf.train.latest_checkpoint(directory).endswith("ckpt-3")
        assert not os.path.exists(os.path.join(directory, "worker_tmp_1"))
        # A variable is saved once, under its first path in the object graph (a model weight
        # under ``optimizer/_trainable_variables``, a BatchNorm statistic under ``model/``).
        saved = {np.asarray(tf.train.load_variable(directory, key)).tobytes()
                 for key, _ in tf.train.list_variables(directory) if key.endswith("VARIABLE_VALUE")}
        assert all(a.tobytes() in saved for a in chief), config


def _train(jit_compile, steps=3, clipnorm=None, optimizer=None, dataset=None, **kwargs):
    keras.utils.set_random_seed(1)
    x, _ = toy_data(8)
    model = make_model(x)
    init = model.get_weights()
    optimizer = optimizer or keras.optimizers.Adam(0.01)
    trainer = Trainer(model, optimizer, jit_compile=jit_compile, clipnorm=clipnorm, verbose=0, **kwargs)
    result = trainer.fit(dataset or toy_dataset(), steps)
    return trainer, result, init


def batchnorm_model(x):
    keras.utils.set_random_seed(4)
    model = keras.Sequential([
        keras.Input(x.shape[1:]), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(momentum=0.5),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3),
    ])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def all_values(trainer):
    return [np.array(v.numpy()) for v in trainer.model.variables + trainer.optimizer.variables]


@pytest.mark.parametrize("jit_compile", [True, False])
def test_non_finite_batch_changes_nothing_batchnorm_statistics_included(jit_compile):
    x, y = toy_data(8)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    dataset = tf.data.Dataset.from_tensor_slices((np.stack([x, bad, x]), np.stack([y, y, y])))
    model = batchnorm_model(x)
    trainer = Trainer(model, keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=jit_compile, verbose=0)
    trainer.fit(dataset.take(1), 1)
    after_good = all_values(trainer)
    moving_mean = model.layers[1].moving_mean.numpy()
    assert np.abs(moving_mean).max() > 0  # the good step moved the statistics
    result = trainer.fit(dataset.skip(1).take(1), 2)
    assert result["skipped_steps"] == 1 and np.isnan(result["loss"])
    assert int(trainer.optimizer.iterations.numpy()) == 1
    for a, b in zip(after_good, all_values(trainer)):
        np.testing.assert_array_equal(a, b)
    result = trainer.fit(dataset.skip(2), 3)  # a good batch trains again
    assert int(trainer.optimizer.iterations.numpy()) == 2 and np.isfinite(result["loss"])


def test_consecutive_non_finite_steps_stop_training_naming_the_step():
    x, y = toy_data(8)
    x[:, 0, 0, 0] = np.inf
    model = batchnorm_model(x)
    trainer = Trainer(model, keras.optimizers.SGD(0.1), max_consecutive_nonfinite=3, verbose=0)
    with pytest.raises(NonFiniteLossError, match=r"at step 3: 3 consecutive steps had non-finite the loss"):
        trainer.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), 10)
    with pytest.raises(ValueError, match="max_consecutive_nonfinite"):
        Trainer(model, keras.optimizers.SGD(0.1), max_consecutive_nonfinite=0)


def test_checkpoint_with_non_finite_weights_is_not_written(tmp_path):
    x, y = toy_data(8)
    model = make_model(x)
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
    Trainer(model, keras.optimizers.SGD(0.1), model_dir=str(tmp_path), verbose=0).fit(dataset, 1)
    model.dense.kernel.assign(np.full(model.dense.kernel.shape, np.inf, "float32"))
    trainer = Trainer(model, keras.optimizers.SGD(0.1), model_dir=str(tmp_path), resume=False,
                      checkpoint_every=1, verbose=0)
    with pytest.raises(NonFiniteLossError, match=r"Not saving the checkpoint of step 1: 1 variable\(s\).*dense/kernel"):
        trainer.fit(dataset, 1)
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-1")  # the good one, untouched
    good = Trainer(make_model(x), keras.optimizers.SGD(0.1), model_dir=str(tmp_path), verbose=0)
    good.fit(dataset, 1)
    assert np.isfinite(good.model.dense.kernel.numpy()).all()


def test_finite_dataset_ends_training_with_a_checkpoint(tmp_path, caplog):
    x, y = toy_data(8)
    dataset = tf.data.Dataset.from_tensor_slices((np.stack([x] * 3), np.stack([y] * 3)))
    trainer = Trainer(make_model(x), keras.optimizers.SGD(0.1), model_dir=str(tmp_path), checkpoint_every=100,
                      verbose=0)
    result = trainer.fit(dataset, 10)
    assert result["end_of_data"] and result["step"] == 3 and np.isfinite(result["loss"])
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-3")
    assert "dataset ended after step 3 of 10" in caplog.text


def test_steps_at_or_below_the_restored_step_train_nothing_and_say_so(tmp_path, caplog):
    x, y = toy_data(8)
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
    Trainer(make_model(x), keras.optimizers.SGD(0.1), model_dir=str(tmp_path), verbose=0).fit(dataset, 2)
    trainer = Trainer(make_model(x), keras.optimizers.SGD(0.1), model_dir=str(tmp_path), verbose=0)
    result = trainer.fit(dataset, 2)
    assert result == {"step": 2, "loss": None, "skipped_steps": 0}
    assert "at step 2, at or past the requested 2 steps" in caplog.text


def test_clipnorm_bounds_global_update_norm():
    trainer, _, init = _train(True, steps=1, clipnorm=1e-3, optimizer=keras.optimizers.SGD(1.0))
    delta = [w - w0 for w, w0 in zip(trainer.model.get_weights(), init)]
    assert np.sqrt(sum(float(np.sum(d**2)) for d in delta)) == pytest.approx(1e-3, rel=1e-4)


@pytest.mark.parametrize("clipnorm", [None, 1e3])
def test_unclipped_step_equals_a_hand_written_sgd_step(clipnorm):
    """A clip norm that does not bind changes nothing: one XLA Trainer step equals w - lr * g
    with g from a GradientTape of the mean cross-entropy (caught: scaling the gradients before
    a clip that only binds when they are large)."""
    keras.utils.set_random_seed(1)
    x, y = toy_data(8)
    model = make_model(x)
    init = model.get_weights()
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, model(x), from_logits=True))
    grads = tape.gradient(loss, model.trainable_variables)
    assert tf.linalg.global_norm(grads) < 1e3
    expected = [w - 0.1 * g.numpy() for w, g in zip(init, grads)]
    trainer = Trainer(model, keras.optimizers.SGD(0.1), jit_compile=True, clipnorm=clipnorm, verbose=0)
    trainer.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), 1)
    for actual, wanted in zip(model.get_weights(), expected):
        np.testing.assert_allclose(actual, wanted, rtol=1e-5, atol=1e-6)


def test_mixed_float16_uses_loss_scaling_and_halves_scale_on_overflow():
    keras.config.set_dtype_policy("mixed_float16")
    x, y = toy_data(8)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.inf
    dataset = tf.data.Dataset.from_tensor_slices((np.stack([x, bad]), np.stack([y, y])))
    model = make_model(x)
    trainer = Trainer(model, keras.optimizers.SGD(0.1), jit_compile=True, verbose=0)
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    initial_scale = trainer.optimizer.initial_scale
    result = trainer.fit(dataset, 2)
    assert np.isfinite(trainer.model.get_weights()[0]).all()
    assert result["skipped_steps"] == 1
    assert int(trainer.optimizer.iterations.numpy()) == 1
    assert float(trainer.optimizer.dynamic_scale.numpy()) == initial_scale / 2


def test_mixed_bfloat16_loss_close_to_float32():
    _, reference, _ = _train(True, steps=1)
    keras.config.set_dtype_policy("mixed_bfloat16")
    trainer, result, _ = _train(True, steps=1)
    assert not isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert result["loss"] == pytest.approx(reference["loss"], abs=2e-2)


def test_eval_hook_and_tensorboard_scalars(tmp_path):
    calls = []

    def eval_fn(model, step):
        calls.append(step)
        return {"accuracy": step / 10}

    _, result, _ = _train(True, steps=4, model_dir=str(tmp_path), eval_fn=eval_fn, eval_every=2, log_every=1)
    assert calls == [2, 4]
    assert result["accuracy"] == pytest.approx(0.4)
    scalars = {}
    for path in tf.io.gfile.glob(str(tmp_path / "train" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                scalars[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
    assert scalars[("eval/accuracy", 4)] == pytest.approx(0.4)
    assert scalars[("loss", 4)] == pytest.approx(result["loss"])
    assert scalars[("learning_rate", 1)] == pytest.approx(0.01)
    assert {step for tag, step in scalars if tag == "images_per_second"} == {1, 2, 3, 4}


def test_toy_detector_with_dict_targets_trains_and_xla_agrees():
    from tests.export.test_saved_model import ToyDetector

    rng = np.random.default_rng(7)
    images = rng.uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    boxes = np.zeros((8, 3, 4), "float32")
    labels = np.full((8, 3), -1, "int32")
    for i in range(8):
        for j in range(1 + i % 3):
            x1, y1 = rng.uniform(0, 16, 2)
            boxes[i, j] = [x1, y1, x1 + rng.uniform(8, 16), y1 + rng.uniform(8, 16)]
            labels[i, j] = rng.integers(0, 2)
    dataset = tf.data.Dataset.from_tensors((images, {"boxes": boxes, "labels": labels})).repeat()
    weights, losses = [], []
    for jit_compile in (True, False):
        keras.utils.set_random_seed(2)
        model = ToyDetector()
        model(images[:1])
        trainer = Trainer(model, keras.optimizers.SGD(0.01), jit_compile=jit_compile, verbose=0)
        first = trainer.fit(dataset, 1)["loss"]
        last = trainer.fit(dataset, 6)["loss"]
        weights.append(model.get_weights())
        losses.append((first, last))
    assert losses[0][1] < losses[0][0]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sample_weights_reach_compute_loss():
    x, y = toy_data(8)
    weights = np.array([1, 1, 1, 1, 0, 0, 0, 0], "float32")
    losses = []
    for dataset in (tf.data.Dataset.from_tensors((x, y, weights)), tf.data.Dataset.from_tensors((x[:4], y[:4]))):
        keras.utils.set_random_seed(1)
        model = make_model(x)
        losses.append(Trainer(model, keras.optimizers.SGD(0.1), verbose=0).fit(dataset, 1)["loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_rejects_dataset_without_static_batch_and_bad_arguments():
    x, y = toy_data(8)
    model = make_model(x)
    trainer = Trainer(model, keras.optimizers.SGD(0.1), verbose=0)
    unbatched_size = tf.data.Dataset.from_tensor_slices((x, y)).batch(3)
    with pytest.raises(ValueError, match="global batch size"):
        trainer.fit(unbatched_size, 1)
    with pytest.raises(ValueError, match="clipnorm"):
        Trainer(model, keras.optimizers.SGD(0.1), clipnorm=0)
    with pytest.raises(ValueError, match="eval_fn"):
        Trainer(model, keras.optimizers.SGD(0.1), eval_fn=3)
    unbuilt = Trainer(ToyClassifier(), keras.optimizers.SGD(0.1), verbose=0)
    ragged_sizes = tf.data.Dataset.from_generator(
        lambda: iter([(x, y)]),
        output_signature=(tf.TensorSpec([8, None, None, 3], tf.float32), tf.TensorSpec([8], tf.int32)),
    )
    with pytest.raises(ValueError, match="unknown dimensions"):
        unbuilt.fit(ragged_sizes, 1)


def test_jit_compile_auto_follows_the_device_and_the_models_cpu_preference(monkeypatch):
    """``jit_compile="auto"``: XLA on a GPU/TPU; on a CPU the model class's ``xla_on_cpu``
    (True without one); explicit bools win; anything else is an error naming the argument."""
    from keras_cvx.models.condinst import CondInst
    from keras_cvx.models.faster_rcnn import FasterRCNN
    from keras_cvx.models.ssd_net import SSDNet
    from keras_cvx.training.trainer import use_xla

    class PrefersGraphs(ToyClassifier):
        xla_on_cpu = False

    x, _ = toy_data(8)
    plain, graphs = make_model(x), PrefersGraphs()
    assert not tf.config.list_logical_devices("GPU")  # this suite runs on CPUs
    assert Trainer(plain, keras.optimizers.SGD(0.1), verbose=0).jit_compile is True
    assert Trainer(graphs, keras.optimizers.SGD(0.1), verbose=0).jit_compile is False
    assert Trainer(graphs, keras.optimizers.SGD(0.1), jit_compile=True, verbose=0).jit_compile is True
    assert Trainer(plain, keras.optimizers.SGD(0.1), jit_compile=False, verbose=0).jit_compile is False
    # the measured CPU preferences of the shipped detectors (see their xla_on_cpu docstrings)
    assert (SSDNet.xla_on_cpu, CondInst.xla_on_cpu, FasterRCNN.xla_on_cpu) == (False, False, True)
    real = tf.config.list_logical_devices
    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: ["GPU:0"] if kind == "GPU" else real(kind))
    assert use_xla("auto", graphs) is True
    with pytest.raises(ValueError, match="jit_compile"):
        use_xla("yes", plain)
