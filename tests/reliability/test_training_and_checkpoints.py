"""Reliability table: training faults and damaged checkpoints.

Every checkpoint case starts from a copy of one run directory trained to step 6 with a
checkpoint every 2 steps (``ckpt-2``, ``ckpt-4``, ``ckpt-6``), damages it as a crash, a full
disk or a user would, resumes with the same command, and checks which step training resumed
from (the steps the evaluation hook sees), that the restored weights are those of the
checkpoint file (read with TensorFlow's checkpoint reader, not through the Trainer) and that
the good checkpoints are byte-identical afterwards."""

import contextlib
import glob
import logging
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cvx.training import Trainer
from keras_cvx.training.checkpoints import CheckpointError
from keras_cvx.training.trainer import NonFiniteLossError
from tests.reliability.cases import Case, Handled, Raises, check_case
from tests.training.test_trainer import ToyClassifier, batchnorm_model, toy_data, toy_dataset

pytestmark = pytest.mark.tensorflow_only  # the tf.distribute Trainer and TensorFlow checkpoints

KERNEL = "model/dense/_kernel/.ATTRIBUTES/VARIABLE_VALUE"


def _model(classes=3):
    model = ToyClassifier(classes)
    model(toy_data(1)[0])
    return model


def _trainer(model_dir, model=None, optimizer=None, steps_seen=None, **kwargs):
    def record(model, step):
        steps_seen.append(step)
        return {}

    options = dict(checkpoint_every=2, max_checkpoints=3, jit_compile=False, verbose=0)
    options.update(kwargs)
    return Trainer(model or _model(), optimizer or keras.optimizers.SGD(0.05, momentum=0.9), model_dir=model_dir,
                   eval_fn=record if steps_seen is not None else None, eval_every=1 if steps_seen is not None else None,
                   **options)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run directory with ckpt-2, ckpt-4 and ckpt-6."""
    directory = str(tmp_path_factory.mktemp("trained") / "run")
    _trainer(directory).fit(toy_dataset(), 6)
    return directory


_RUN = {}


@pytest.fixture(autouse=True)
def _share_run(trained_run):
    _RUN["path"] = trained_run


def _copy(tmp_path):
    directory = str(tmp_path / "run")
    shutil.copytree(_RUN["path"], directory)
    return directory


def _files(directory, step):
    return sorted(glob.glob(os.path.join(directory, f"ckpt-{step}.*")))


def _contents(directory, steps):
    return {os.path.basename(f): open(f, "rb").read() for s in steps for f in _files(directory, s)}


def _saved_kernel(directory, step):
    return tf.train.load_checkpoint(os.path.join(directory, f"ckpt-{step}")).get_tensor(KERNEL)


@contextlib.contextmanager
def _warnings_logged():
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("keras_cvx")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def _resume_after(damage, steps=6):
    """Damages a copy of the run with ``damage(directory)``, resumes it to ``steps``; returns
    what the checks need."""

    def run(tmp_path):
        directory = _copy(tmp_path)
        damage(directory)
        good = {s: _contents(directory, [s]) for s in (2, 4, 6)}
        seen, restored_kernel = [], {}
        trainer = _trainer(directory, steps_seen=seen)
        original_fit_step = trainer._train_step

        def first_step(iterator):  # the weights right after the restore, before training
            if not restored_kernel:
                restored_kernel["value"] = trainer.model.dense.kernel.numpy().copy()
            return original_fit_step(iterator)

        trainer._train_step = first_step
        with _warnings_logged() as records:
            result = trainer.fit(toy_dataset(), steps)
        return dict(directory=directory, seen=seen, good=good, result=result, kernel=restored_kernel.get("value"),
                    log="\n".join(r.getMessage() for r in records))

    return run


def _resumed_from(step, warning=None):
    def check(out):
        assert out["seen"] == list(range(step + 1, 7)), out["seen"]
        if step:
            np.testing.assert_array_equal(out["kernel"], _saved_kernel(_RUN["path"], step))
        for s in (2, 4):
            if s <= step and out["good"][s]:  # the good checkpoints up to the restored one are untouched
                assert _contents(out["directory"], [s]) == out["good"][s], f"ckpt-{s} changed"
        assert not [p for p in os.listdir(out["directory"]) if p.endswith("_temp")]
        if warning:
            assert warning in out["log"], out["log"]
        # the checkpoint written at step 6 after the resume is readable
        assert np.isfinite(_saved_kernel(out["directory"], 6)).all()

    return check


def _remove(pattern):
    def damage(directory):
        for path in glob.glob(os.path.join(directory, pattern)):
            os.remove(path)

    return damage


def _rewrite(pattern, change):
    def damage(directory):
        for path in glob.glob(os.path.join(directory, pattern)):
            data = bytearray(open(path, "rb").read())
            open(path, "wb").write(bytes(change(data)))

    return damage


def _flip_byte(data):
    data[len(data) // 2] ^= 0xFF
    return data


def _interrupted_write(directory):
    temp = os.path.join(directory, "ckpt-8_temp")
    os.makedirs(temp)
    open(os.path.join(temp, "part-00000-of-00001.data-00000-of-00001"), "wb").write(b"\0" * 100)


def _all_truncated(tmp_path):
    directory = _copy(tmp_path)
    _rewrite("ckpt-*.data-*", lambda d: d[:40])(directory)
    before = _contents(directory, (2, 4, 6))
    try:
        _trainer(directory).fit(toy_dataset(), 8)
    finally:
        assert _contents(directory, (2, 4, 6)) == before  # nothing deleted or rewritten
        assert not glob.glob(os.path.join(directory, "ckpt-8*"))


def _resume_with(**changes):
    def run(tmp_path):
        directory = _copy(tmp_path)
        before = _contents(directory, (2, 4, 6))
        dataset = toy_dataset(global_batch=changes.pop("batch", 8))
        try:
            _trainer(directory, **changes).fit(dataset, 8)
        finally:
            assert _contents(directory, (2, 4, 6)) == before

    return run


def _steps_already_done(tmp_path):
    directory = _copy(tmp_path)
    trainer = _trainer(directory)
    with _warnings_logged() as records:
        result = trainer.fit(toy_dataset(), 4)
    return dict(result=result, kernel=trainer.model.dense.kernel.numpy(), log=records[0].getMessage())


def _check_steps_already_done(out):
    assert out["result"] == {"step": 6, "loss": None, "skipped_steps": 0}
    np.testing.assert_array_equal(out["kernel"], _saved_kernel(_RUN["path"], 6))
    assert "at or past the requested 4 steps" in out["log"]


def _start_over_deliberately(tmp_path):
    directory = _copy(tmp_path)
    seen = []
    with _warnings_logged() as records:
        _trainer(directory, steps_seen=seen, resume=False).fit(toy_dataset(), 2)
    return dict(seen=seen, log="\n".join(r.getMessage() for r in records))


def _check_started_over(out):
    assert out["seen"] == [1, 2]
    assert "resume=False" in out["log"] and "ckpt-6" in out["log"]


def _optimizer_without_momentum(tmp_path):
    directory = _copy(tmp_path)
    seen = []
    result = _trainer(directory, optimizer=keras.optimizers.SGD(0.05), steps_seen=seen).fit(toy_dataset(), 8)
    return dict(seen=seen, result=result)


def _check_trains_on(out):
    assert out["seen"] == [7, 8] and np.isfinite(out["result"]["loss"])


# ------------------------------------------------------------------------------ training faults

def _batches(*batches):
    x = np.stack([b[0] for b in batches])
    y = np.stack([b[1] for b in batches])
    return tf.data.Dataset.from_tensor_slices((x, y))


def _nan_pixels_then_good(tmp_path):
    x, y = toy_data(8)
    bad = x.copy()
    bad[3, 5, 5, 1] = np.nan
    model = batchnorm_model(x)
    trainer = Trainer(model, keras.optimizers.SGD(0.1, momentum=0.9), verbose=0)
    before = [v.numpy().copy() for v in model.variables]
    result = trainer.fit(_batches((bad, y)), 1)
    after = [v.numpy().copy() for v in model.variables]
    return dict(result=result, unchanged=all(np.array_equal(a, b) for a, b in zip(before, after)),
                finite_outputs=bool(np.isfinite(model.predict(x, verbose=0)).all()))


def _check_nothing_changed(out):
    assert out["result"]["skipped_steps"] == 1 and out["unchanged"] and out["finite_outputs"]


def _diverging_learning_rate(tmp_path):
    directory = str(tmp_path / "run")
    x, y = toy_data(8)
    model = batchnorm_model(x)
    trainer = Trainer(model, keras.optimizers.SGD(1e30), model_dir=directory, checkpoint_every=1, verbose=0)
    try:
        trainer.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), 20)
    finally:
        for prefix in {p.rsplit(".", 1)[0] for p in glob.glob(os.path.join(directory, "ckpt-*.index"))}:
            reader = tf.train.load_checkpoint(prefix)
            for key, dtype in reader.get_variable_to_dtype_map().items():
                if dtype.is_floating:
                    assert np.isfinite(reader.get_tensor(key)).all(), (prefix, key)


def _labels_run(labels, jit_compile, with_num_classes):
    def run(tmp_path):
        x, _ = toy_data(8)
        y = np.array(labels, "int32")
        if with_num_classes:
            model = _model()
            model.num_classes = 3
        else:
            model = batchnorm_model(x)
        before = [v.numpy().copy() for v in model.variables]
        try:
            Trainer(model, keras.optimizers.SGD(0.1), jit_compile=jit_compile, verbose=0).fit(
                tf.data.Dataset.from_tensors((x, y)).repeat(), 2)
        finally:
            assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.variables))

    return run


def _nan_sample_weight(tmp_path):
    x, y = toy_data(8)
    w = np.ones(8, "float32")
    w[2] = np.nan
    model = _model()
    before = [v.numpy().copy() for v in model.variables]
    result = Trainer(model, keras.optimizers.SGD(0.1), verbose=0).fit(
        tf.data.Dataset.from_tensors((x, y, w)), 1)
    return dict(result=result, unchanged=all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.variables)),
                finite_outputs=bool(np.isfinite(model(x).numpy()).all()))


def _finite_dataset(tmp_path):
    directory = str(tmp_path / "run")
    x, y = toy_data(8)
    result = _trainer(directory, checkpoint_every=100).fit(_batches((x, y), (x, y), (x, y)), 10)
    return dict(result=result, latest=tf.train.latest_checkpoint(directory))


def _check_finite_dataset(out):
    assert out["result"]["end_of_data"] and out["result"]["step"] == 3
    assert out["latest"].endswith("ckpt-3")


def _unbatched(tmp_path):
    x, y = toy_data(8)
    Trainer(_model(), keras.optimizers.SGD(0.1), verbose=0).fit(tf.data.Dataset.from_tensor_slices((x, y)), 2)


def _batched_without_drop_remainder(tmp_path):
    x, y = toy_data(12)
    Trainer(_model(), keras.optimizers.SGD(0.1), verbose=0).fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), 2)


CASES = [
    Case("newest checkpoint files deleted", "checkpoints", _resume_after(_remove("ckpt-6.*")),
         Handled(_resumed_from(4, "ckpt-6.index is missing"), "resumes from ckpt-4, names ckpt-6")),
    Case("newest checkpoint data truncated", "checkpoints", _resume_after(_rewrite("ckpt-6.data-*", lambda d: d[:50])),
         Handled(_resumed_from(4, "ckpt-6"), "resumes from ckpt-4")),
    Case("newest checkpoint index overwritten with garbage", "checkpoints",
         _resume_after(_rewrite("ckpt-6.index", lambda d: b"garbage" * 10)),
         Handled(_resumed_from(4, "not an sstable"), "resumes from ckpt-4")),
    Case("newest checkpoint data with a flipped byte", "checkpoints",
         _resume_after(_rewrite("ckpt-6.data-*", _flip_byte)),
         Handled(_resumed_from(4, "ckpt-6"), "resumes from ckpt-4")),
    Case("newest checkpoint data file missing", "checkpoints", _resume_after(_remove("ckpt-6.data-*")),
         Handled(_resumed_from(4, "ckpt-6"), "resumes from ckpt-4")),
    Case("two newest checkpoints truncated", "checkpoints",
         _resume_after(_rewrite("ckpt-[46].data-*", lambda d: d[:50])),
         Handled(_resumed_from(2, "ckpt-4"), "resumes from ckpt-2")),
    Case("checkpoint state file deleted", "checkpoints", _resume_after(_remove("checkpoint"), steps=8),
         Handled(lambda out: out["seen"] == [7, 8] or pytest.fail(str(out["seen"])), "resumes from ckpt-6")),
    Case("checkpoint state file garbage", "checkpoints",
         _resume_after(_rewrite("checkpoint", lambda d: b"\x00\xffnot a proto{{"), steps=8),
         Handled(lambda out: (out["seen"] == [7, 8] and "state file" in out["log"]) or pytest.fail(str(out)),
                 "resumes from ckpt-6 with a warning")),
    Case("temporary folder of an interrupted write", "checkpoints", _resume_after(_interrupted_write, steps=8),
         Handled(lambda out: (out["seen"] == [7, 8] and "interrupted" in out["log"]
                              and not os.path.exists(os.path.join(out["directory"], "ckpt-8_temp")))
                 or pytest.fail(str(out)), "deleted, resumes from ckpt-6")),
    Case("every checkpoint truncated", "checkpoints", _all_truncated,
         Raises(CheckpointError, r"None of the 3 checkpoint\(s\).*Not starting over silently")),
    Case("resume with another optimizer (Adam after SGD)", "checkpoints",
         _resume_with(optimizer=keras.optimizers.Adam(1e-3)), Raises(CheckpointError, "does not match this run")),
    Case("resume with another model (4 classes instead of 3)", "checkpoints", _resume_with(model=_model(4)),
         Raises(CheckpointError, "does not match this run")),
    Case("resume with another global batch size", "checkpoints", _resume_with(batch=4),
         Raises(CheckpointError, "global batch size 8; this run's dataset has 4")),
    Case("resume with SGD without momentum", "checkpoints", _optimizer_without_momentum,
         Handled(_check_trains_on, "trains on from ckpt-6")),
    Case("steps requested below the restored step", "checkpoints", _steps_already_done,
         Handled(_check_steps_already_done, "nothing trained, says so")),
    Case("resume=False in a directory with checkpoints", "checkpoints", _start_over_deliberately,
         Handled(_check_started_over, "starts over with a warning")),
    Case("NaN pixels in a batch", "training", _nan_pixels_then_good,
         Handled(_check_nothing_changed, "skipped; weights and BatchNorm statistics unchanged")),
    Case("NaN sample weight", "training", _nan_sample_weight,
         Handled(_check_nothing_changed, "skipped; weights unchanged")),
    Case("learning rate 1e30", "training", _diverging_learning_rate,
         Raises(NonFiniteLossError, "consecutive steps had non-finite")),
    Case("class id = num_classes, XLA", "training", _labels_run([0, 1, 2, 3] * 2, True, True),
         Raises(ValueError, r"Class ids must be in \[0, 3\).*step 1 holds 3 3")),
    Case("class id = num_classes, no XLA", "training", _labels_run([0, 1, 2, 3] * 2, False, True),
         Raises(ValueError, r"Class ids must be in \[0, 3\)")),
    Case("class id -5", "training", _labels_run([0, -5, 1, 1] * 2, True, True),
         Raises(ValueError, r"or -1 for padding.*holds -5 -5")),
    Case("class id 3 for a 3-output SparseCategoricalCrossentropy model", "training",
         _labels_run([0, 1, 3, 2] * 2, True, False), Raises(ValueError, r"Class ids must be in \[0, 3\)")),
    Case("finite dataset", "training", _finite_dataset,
         Handled(_check_finite_dataset, "ends cleanly with a final checkpoint")),
    Case("unbatched dataset", "training", _unbatched, Raises(ValueError, r"is the dataset batched\?.*ndim=3")),
    Case("batched without drop_remainder", "training", _batched_without_drop_remainder,
         Raises(ValueError, "drop_remainder=True")),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_case(case, tmp_path):
    check_case(case, tmp_path)
