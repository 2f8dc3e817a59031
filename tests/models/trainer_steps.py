"""One detector training step three ways, in a fresh process (MirroredStrategy needs its 2
logical CPUs configured before TensorFlow initialises)::

    python -m tests.models.trainer_steps OUT.json tests.models.test_condinst

(the last argument: a test module with ``tiny_model(seed)`` and ``tiny_data(batch, seed)``)

* ``reference``: a hand-written eager ``tf.GradientTape`` step (``reference_xla``: the same
  step compiled by XLA, whose random draws differ from the CPU kernels') of plain SGD on batch A (2
  images): ``w - lr * d compute_loss(A) / dw``; BatchNorm moving statistics (CondInst's mask
  branch) are those of the eager forward pass.
* ``xla``: ``keras_cvx.training.Trainer(jit_compile=True)`` on A (default strategy), against
  ``reference_xla``.
* ``mirrored``: the Trainer (``jit_compile=MIRRORED_XLA``) under ``MirroredStrategy`` over 2
  logical CPUs on the global batch [A, A]: each replica sees A (and draws the same samples),
  normalisers are summed over the replicas (twice A's) and per-replica means are each halved,
  so the global loss, its gradient and the mean of the replicas' BatchNorm statistics are
  A's: the step must equal the reference.

Writes ``{"losses": {...}, "weight_difference": {...}, "state_difference": {...}, "unmoved":
[paths of the weights the reference step left unchanged], "replicas": n, "positives": p}`` (``positives``: CondInst's FCOS positives, when the model has
``assign_targets``).
(differences: max |a - b| / max |b| over the variables).
"""

import json
import sys

import numpy as np

LEARNING_RATE = 0.05
MIRRORED_XLA = False
"""The Mirrored step runs as a graph: on 2 CPU cores its XLA compilation takes ~3 minutes (the
default-strategy XLA step ~1), too long for the suite; the XLA step is checked on the
default strategy."""


def _float_state(model):
    return [v for v in model.non_trainable_variables if "float" in str(v.dtype)]


def _copy_values(source, target):
    for a, b in zip(source.weights, target.weights):
        assert a.shape == b.shape, (a.path, b.path)
        b.assign(a.value)


def _relative_difference(actual, expected):
    return max((float(np.max(np.abs(a - e))) / max(float(np.max(np.abs(e))), 1e-12) for a, e in zip(actual, expected)),
               default=0.0)


def main(out_path, test_module):
    import importlib

    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    from keras_cvx.training.trainer import Trainer
    module = importlib.import_module(test_module)
    tiny_data, tiny_model = module.tiny_data, module.tiny_model

    images, y = tiny_data(batch=2, seed=4)
    source = tiny_model(seed=4)
    initial = [v.numpy() for v in source.trainable_variables]

    def hand_written_step(jit_compile):
        """``(loss, weights after the SGD step, float state)`` of the reference step."""
        reference = tiny_model(seed=4)
        _copy_values(source, reference)

        def step():
            with tf.GradientTape() as tape:
                out = reference(images, training=True)
                loss = reference.compute_loss(images, y, out)
            return loss, tape.gradient(loss, reference.trainable_variables)

        loss, grads = tf.function(step, jit_compile=True)() if jit_compile else step()
        weights = [w - LEARNING_RATE * (0 if g is None else g.numpy()) for w, g in zip(initial, grads)]
        return float(loss), weights, [v.numpy() for v in _float_state(reference)], reference

    # XLA's stateless random numbers differ from the CPU kernels': the XLA run of a model that
    # samples at random (anchors, RoIs: ``SAMPLES_AT_RANDOM`` in its test module) is compared
    # with the same hand-written step compiled by XLA
    references = {"mirrored": hand_written_step(False)}
    references["xla"] = hand_written_step(True) if getattr(module, "SAMPLES_AT_RANDOM", False) else references["mirrored"]
    reference = references["mirrored"][3]
    positives = (int(np.sum(reference.assign_targets(y)["labels"].numpy() >= 0))
                 if hasattr(reference, "assign_targets") else None)
    expected = references["mirrored"][1]
    losses = {"reference": references["mirrored"][0], "reference_xla": references["xla"][0]}
    weights, states = {}, {}

    def run(name, strategy, batch, jit_compile):
        with strategy.scope():
            model = tiny_model(seed=4)
            _copy_values(source, model)
            optimizer = keras.optimizers.SGD(LEARNING_RATE)
        dataset = tf.data.Dataset.from_tensors(batch).repeat()
        trainer = Trainer(model, optimizer, strategy, jit_compile=jit_compile, verbose=0)
        losses[name] = trainer.fit(dataset, 1)["loss"]
        _, expected_weights, expected_state, _ = references[name]
        weights[name] = _relative_difference([v.numpy() for v in model.trainable_variables], expected_weights)
        states[name] = _relative_difference([v.numpy() for v in _float_state(model)], expected_state)
        return strategy.num_replicas_in_sync

    run("xla", tf.distribute.get_strategy(), (images, y), True)
    doubled = tuple(tf.nest.map_structure(lambda a: np.concatenate([a, a]), (images, y)))
    replicas = run("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), doubled, MIRRORED_XLA)
    unmoved = [v.path.split("/", 1)[1] for v, a, b in zip(source.trainable_variables, initial, expected)
               if np.array_equal(a, b)]
    with open(out_path, "w") as f:
        json.dump({"losses": losses, "weight_difference": weights, "state_difference": states, "unmoved": unmoved,
                   "replicas": replicas, "positives": positives}, f)


def run_and_check(tmp_path, test_module, tolerance=1e-4):
    """Runs this script for ``test_module`` in a fresh process and asserts what every detector's
    step must give: 2 replicas; a finite positive loss; the XLA step's loss, weights and
    BatchNorm state equal to the XLA-compiled reference's and the Mirrored step's to the eager
    reference's (relative ``tolerance``). Returns the result for the model's own checks."""
    import pytest

    from tests.fresh_process import run_module_for_json

    result = run_module_for_json("tests.models.trainer_steps", tmp_path / "steps.json", timeout=600,
                                 args=[test_module])
    assert result["replicas"] == 2
    losses = result["losses"]
    assert np.isfinite(losses["reference"]) and losses["reference"] > 0
    assert losses["xla"] == pytest.approx(losses["reference_xla"], rel=tolerance)
    assert losses["mirrored"] == pytest.approx(losses["reference"], rel=tolerance)
    for name in ("xla", "mirrored"):
        assert result["weight_difference"][name] < tolerance, name
        assert result["state_difference"][name] < tolerance, name
    return result


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
