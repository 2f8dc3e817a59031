"""Tests for keras_cvx.training.checkpoints: numbering, max_to_keep, restore, chief
detection, and SIGKILL mid-run then the same command resumes and ends with the weights of an
uninterrupted run."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_cvx.training.checkpoints import TrainingCheckpoint, is_chief
from tests.training.test_trainer import REPO_ROOT

TRAIN_SCRIPT = """
import sys, time
import numpy as np
from keras_cvx.training.cli import build_trainer, make_parser
from tests.training.test_trainer import ToyClassifier, toy_data

parser = make_parser(batch_size=8, steps=12, checkpoint_every=3, eval_every=1, log_every=1,
                     verbose=0, learning_rate=0.05, warmup_steps=2, deterministic=True)
parser.add_argument("--sleep", type=float, default=0.0)
args = parser.parse_args()

def build_model():
    model = ToyClassifier()
    model(toy_data(1)[0])
    return model

def report(model, step):
    print("step", step, flush=True)
    time.sleep(args.sleep)
    return {}

strategy, trainer = build_trainer(args, build_model, eval_fn=report)
import tensorflow as tf
x, y = toy_data(32, seed=5)
dataset = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(32, seed=3)
           .batch(args.batch_size, drop_remainder=True).repeat())
trainer.fit(dataset, args.steps)
np.savez(args.model_dir + "/final.npz", *trainer.model.get_weights())
"""


def _command(tmp_path, model_dir, extra, sleep):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    return [sys.executable, str(script), "--model-dir", str(model_dir), "--sleep", str(sleep), *extra]


def _env():
    return dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO_ROOT)


def _weights(model_dir):
    with np.load(os.path.join(model_dir, "final.npz")) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


@pytest.mark.parametrize("extra", [[], ["--strategy", "mirrored", "--logical-cpu-devices", "2"]],
                         ids=["default", "mirrored"])
def test_sigkill_then_same_command_resumes_to_same_weights(tmp_path, extra):
    killed_dir, reference_dir = tmp_path / "killed", tmp_path / "reference"
    command = _command(tmp_path, killed_dir, extra, sleep=0.25)
    reference = subprocess.Popen(_command(tmp_path, reference_dir, extra, sleep=0), cwd=tmp_path, env=_env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc = subprocess.Popen(
        command, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        for line in proc.stdout:
            if line.strip() == "step 7":  # ckpt-6 is written before step 6's evaluation hook
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=120)
    except BaseException:
        reference.kill()
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert tf.train.latest_checkpoint(str(killed_dir)).endswith("ckpt-6")

    resumed = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [int(line.split()[1]) for line in resumed.stdout.splitlines() if line.startswith("step ")]
    assert steps == list(range(7, 13))

    _, reference_errors = reference.communicate(timeout=180)
    assert reference.returncode == 0, reference_errors[-3000:]
    for a, b in zip(_weights(killed_dir), _weights(reference_dir)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert tf.train.latest_checkpoint(str(killed_dir)).endswith("ckpt-12")


def test_numbered_by_step_keeps_latest_and_restores(tmp_path):
    strategy = tf.distribute.get_strategy()
    value = tf.Variable(1.0)
    step = tf.Variable(0, dtype=tf.int64)
    checkpoint = TrainingCheckpoint(str(tmp_path), strategy, max_to_keep=2, value=value, step=step)
    assert checkpoint.restore_latest() is None
    for s in (5, 10, 15):
        value.assign(float(s))
        step.assign(s)
        checkpoint.save(s)
    kept = sorted(os.path.basename(p) for p in checkpoint.manager.checkpoints)
    assert kept == ["ckpt-10", "ckpt-15"]
    value.assign(-1.0)
    step.assign(0)
    restored = TrainingCheckpoint(str(tmp_path), strategy, value=value, step=step)
    assert restored.restore_latest().endswith("ckpt-15")
    assert (float(value.numpy()), int(step.numpy())) == (15.0, 15)
    with pytest.raises(ValueError, match="max_to_keep"):
        TrainingCheckpoint(str(tmp_path), strategy, max_to_keep=0, value=value)


class _Resolver:
    def __init__(self, task_type, task_id, cluster):
        self.task_type, self.task_id, self._cluster = task_type, task_id, cluster

    def cluster_spec(self):
        return tf.train.ClusterSpec(self._cluster)


class _Strategy:
    def __init__(self, resolver):
        self.cluster_resolver = resolver


def test_is_chief_rules():
    workers = {"worker": ["localhost:1", "localhost:2"]}
    with_chief = {"chief": ["localhost:0"], **workers}
    assert is_chief(tf.distribute.get_strategy())
    assert is_chief(_Strategy(_Resolver("worker", 0, workers)))
    assert not is_chief(_Strategy(_Resolver("worker", 1, workers)))
    assert not is_chief(_Strategy(_Resolver("worker", 0, with_chief)))
    assert is_chief(_Strategy(_Resolver("chief", 0, with_chief)))
