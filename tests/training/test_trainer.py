"""Tests for keras_cvx.training.trainer: 1 device vs MirroredStrategy over 2 logical CPUs,
2-worker MultiWorkerMirroredStrategy, XLA vs no XLA, skipping of non-finite steps,
clipping, mixed precision, evaluation hook and TensorBoard scalars."""

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

from keras_cvx.training.trainer import Trainer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@keras.saving.register_keras_serializable(package="keras_cvx_tests")
class ToyClassifier(keras.Model):
    """Conv -> global pool -> dense; ``compute_loss`` is the replica-mean cross-entropy
    (weighted mean with ``sample_weight``)."""

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
            return ops.mean(nll)
        return ops.sum(nll * sample_weight) / ops.sum(sample_weight)


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


def test_mirrored_two_cpus_matches_single_device_with_xla():
    out = run_python(
        """
        import json, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras, numpy as np
        from tests.training.test_trainer import make_model, toy_data
        from keras_cvx.training.trainer import Trainer
        keras.utils.set_random_seed(0)
        x, y = toy_data(8)
        ds = tf.data.Dataset.from_tensors((x, y)).repeat()
        out, init = {}, None
        runs = [("one", "float32", tf.distribute.OneDeviceStrategy("/cpu:0")),
                ("mirrored", "float32", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])),
                ("one_f16", "mixed_float16", tf.distribute.OneDeviceStrategy("/cpu:0")),
                ("mirrored_f16", "mixed_float16", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))]
        for name, policy, strategy in runs:
            keras.config.set_dtype_policy(policy)
            with strategy.scope():
                model = make_model(x, init)
                init = model.get_weights()
                optimizer = keras.optimizers.SGD(1.0)
            result = Trainer(model, optimizer, strategy, jit_compile=True, verbose=0).fit(ds, 1)
            # SGD(1.0): weight change = -gradient of the global-batch mean loss
            out[name] = dict(loss=result["loss"], replicas=strategy.num_replicas_in_sync,
                             iterations=int(optimizer.iterations.numpy()),
                             grads=[(b - a).tolist() for a, b in zip(model.get_weights(), init)])
        print(json.dumps(out))
        """
    )
    out = json.loads(out.strip().splitlines()[-1])
    for half in ("one_f16", "mirrored_f16"):  # mixed_float16 with loss scaling: fp16 tolerance
        assert out[half]["iterations"] == 1
        assert out[half]["loss"] == pytest.approx(out["one"]["loss"], abs=5e-3)
        for g1, g2 in zip(out["one"]["grads"], out[half]["grads"]):
            np.testing.assert_allclose(np.array(g2), np.array(g1), rtol=0, atol=5e-3)
    one, mirrored = out["one"], out["mirrored"]
    assert (one["replicas"], mirrored["replicas"]) == (1, 2)
    assert one["iterations"] == mirrored["iterations"] == 1
    # float32 summation order differs (per-replica sums, then all-reduce); over random
    # initialisations the largest |diff| seen was 9e-6 (gradients up to ~1): tolerance
    # |diff| <= 5e-5 + 1e-4 |g| for gradients, 1e-6 for the loss
    assert mirrored["loss"] == pytest.approx(one["loss"], rel=1e-6, abs=1e-6)
    for g1, g2 in zip(one["grads"], mirrored["grads"]):
        np.testing.assert_allclose(np.array(g2), np.array(g1), rtol=1e-4, atol=5e-5)
    # the single-device result is the NumPy-free reference: loss of the untrained net ~ ln 3
    assert 0.5 < one["loss"] < 2.0
    assert max(np.abs(np.array(g)).max() for g in one["grads"]) > 1e-4


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_multiworker_two_localhost_workers_end_with_identical_weights(tmp_path):
    ports = [_free_port(), _free_port()]
    code = textwrap.dedent(
        """
        import json, sys, tensorflow as tf
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        import keras, numpy as np
        from tests.training.test_trainer import make_model, toy_dataset, toy_data
        from keras_cvx.training.trainer import Trainer
        keras.utils.set_random_seed(0)
        x, _ = toy_data(2)
        with strategy.scope():
            model = make_model(x)
            optimizer = keras.optimizers.Adam(0.01)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        ds = toy_dataset(global_batch=8).with_options(options)
        result = Trainer(model, optimizer, strategy, model_dir=sys.argv[1], checkpoint_every=2,
                         jit_compile=True, verbose=0).fit(ds, 4)
        print(json.dumps(dict(loss=result["loss"], replicas=strategy.num_replicas_in_sync,
                              weights=[w.tolist() for w in model.get_weights()])))
        """
    )
    procs = []
    for index in range(2):
        tf_config = {
            "cluster": {"worker": [f"localhost:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(tf_config))
        procs.append(subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "run")], cwd=REPO_ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    outputs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=240)
            assert proc.returncode == 0, stderr[-4000:]
            outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert outputs[0]["replicas"] == outputs[1]["replicas"] == 2
    assert outputs[0]["loss"] == outputs[1]["loss"]
    for w0, w1 in zip(outputs[0]["weights"], outputs[1]["weights"]):
        np.testing.assert_array_equal(np.array(w0), np.array(w1))
    assert tf.train.latest_checkpoint(str(tmp_path / "run")).endswith("ckpt-4")
    assert not (tmp_path / "run" / "worker_tmp_1").exists()


def _train(jit_compile, steps=3, clipnorm=None, optimizer=None, dataset=None, **kwargs):
    keras.utils.set_random_seed(1)
    x, _ = toy_data(8)
    model = make_model(x)
    init = model.get_weights()
    optimizer = optimizer or keras.optimizers.Adam(0.01)
    trainer = Trainer(model, optimizer, jit_compile=jit_compile, clipnorm=clipnorm, verbose=0, **kwargs)
    result = trainer.fit(dataset or toy_dataset(), steps)
    return trainer, result, init


def test_xla_and_non_xla_steps_agree():
    trainer_xla, with_xla, _ = _train(True)
    weights_xla = trainer_xla.model.get_weights()
    trainer, without_xla, _ = _train(False)
    assert with_xla["loss"] == pytest.approx(without_xla["loss"], rel=1e-5)
    for a, b in zip(weights_xla, trainer.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_non_finite_step_is_skipped_and_counted():
    x, y = toy_data(8)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    dataset = tf.data.Dataset.from_tensor_slices((np.stack([x, bad, x]), np.stack([y, y, y])))
    keras.utils.set_random_seed(1)
    model = make_model(x)
    optimizer = keras.optimizers.SGD(0.1)
    trainer = Trainer(model, optimizer, jit_compile=True, verbose=0)
    trainer.fit(dataset.take(1), 1)
    after_good = model.get_weights()
    result = trainer.fit(dataset.skip(1), 2)
    assert result["skipped_steps"] == 1
    assert int(optimizer.iterations.numpy()) == 1
    for a, b in zip(after_good, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert np.isnan(result["loss"])


def test_clipnorm_bounds_global_update_norm():
    trainer, _, init = _train(True, steps=1, clipnorm=1e-3, optimizer=keras.optimizers.SGD(1.0))
    delta = [w - w0 for w, w0 in zip(trainer.model.get_weights(), init)]
    assert np.sqrt(sum(float(np.sum(d**2)) for d in delta)) == pytest.approx(1e-3, rel=1e-4)


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
