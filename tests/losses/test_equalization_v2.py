import os
import subprocess
import sys
import tempfile
import textwrap

import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.losses.equalization_v2 import EqualizationLossV2
from tests.test_case import run_layer_test


def _data(seed=0, rois=6, classes=3):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(rois, classes + 1)).astype("float32")
    labels = rng.integers(0, classes + 1, size=rois).astype("int32")
    return logits, labels


class NumpyEQLv2:
    """The official algorithm written with NumPy arrays (spec §7)."""

    def __init__(self, classes, gamma=12.0, mu=0.8, alpha=4.0):
        self.c, self.gamma, self.mu, self.alpha = classes, gamma, mu, alpha
        self.pos, self.neg, self.ratio = np.zeros(classes), np.zeros(classes), np.full(classes, 100.0)

    def step(self, z, g):
        keep = g >= 0
        z, g = z[keep].astype(np.float64), g[keep]
        y = np.eye(self.c + 1)[g]
        neg_w = 1 / (1 + np.exp(-self.gamma * (self.ratio - self.mu)))
        pos_w = 1 + self.alpha * (1 - neg_w)
        w = np.ones_like(y)
        w[:, : self.c] = pos_w * y[:, : self.c] + neg_w * (1 - y[:, : self.c])
        p = 1 / (1 + np.exp(-z))
        loss = np.sum(w * -(y * np.log(p) + (1 - y) * np.log(1 - p))) / len(g)
        self.pos += np.sum(np.abs(p - 1) * y * w, axis=0)[: self.c]
        self.neg += np.sum(p * (1 - y) * w, axis=0)[: self.c]
        self.ratio = self.pos / (self.neg + 1e-10)
        return loss


def test_harness():
    logits, labels = _data()
    run_layer_test(
        EqualizationLossV2,
        {"num_classes": 3},
        [logits, labels],
        expected_output_shape=(6,),
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=3,
        mixed_precision_output_dtype="float32",
    )


def test_first_step_is_plain_bce_then_matches_numpy_over_steps():
    layer, reference = EqualizationLossV2(3), NumpyEQLv2(3)
    for step in range(4):
        logits, labels = _data(step, rois=10)
        labels[step] = -1  # one padding row per step
        value = float(ops.convert_to_numpy(ops.mean(layer(logits, labels, training=True))))
        np.testing.assert_allclose(value, reference.step(logits, labels), rtol=1e-5)
        if step == 0:
            y = np.eye(4)[labels[labels >= 0]]
            bce = keras.losses.BinaryCrossentropy(from_logits=True, reduction="sum")(y, logits[labels >= 0])
            np.testing.assert_allclose(value, float(bce) * 4 / 9, rtol=1e-5)
    stats = layer.statistics()
    np.testing.assert_allclose(stats["pos_grad"], reference.pos, rtol=1e-5)
    np.testing.assert_allclose(stats["neg_grad"], reference.neg, rtol=1e-5)


def test_inference_does_not_update_statistics():
    layer = EqualizationLossV2(3)
    logits, labels = _data()
    layer(logits, labels, training=False)
    np.testing.assert_array_equal(layer.statistics()["pos_neg_ratio"], 100.0)
    np.testing.assert_array_equal(layer.statistics()["pos_grad"], 0.0)


def test_rare_class_negatives_are_down_weighted_after_training():
    """A class never seen as positive gets g = 0 -> neg_w = σ(−γμ) ≈ 6.8e-5, pos_w ≈ 1 + α."""
    layer = EqualizationLossV2(2)
    logits = np.zeros((8, 3), "float32")
    labels = np.array([0, 0, 0, 2, 2, 2, 2, 0], "int32")
    layer(logits, labels, training=True)
    pos_w, neg_w = (ops.convert_to_numpy(t) for t in layer.class_weights())
    np.testing.assert_allclose(neg_w[1], 1 / (1 + np.exp(12 * 0.8)), rtol=1e-5)
    np.testing.assert_allclose(pos_w[1], 1 + 4 * (1 - neg_w[1]), rtol=1e-6)
    assert neg_w[0] > neg_w[1]


def test_statistics_survive_keras_save_and_load():
    logits, labels = _data(1, rois=8)
    inputs = [keras.Input((4,)), keras.Input((), dtype="int32")]
    layer = EqualizationLossV2(3)
    model = keras.Model(inputs, layer(*inputs))
    layer(logits, labels, training=True)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.keras")
        model.save(path)
        restored = keras.saving.load_model(path, safe_mode=True)
    restored_layer = restored.layers[-1]
    for name, value in layer.statistics().items():
        np.testing.assert_array_equal(restored_layer.statistics()[name], value)
    np.testing.assert_allclose(
        ops.convert_to_numpy(restored.predict([logits, labels], verbose=0)),
        ops.convert_to_numpy(layer(logits, labels)),
        rtol=1e-6,
    )


@pytest.mark.tensorflow_only
def test_statistics_are_summed_across_replicas():
    """Two logical CPU replicas of a MirroredStrategy, each with its own RoI: reading the statistics in cross-replica context gives the sum
    of both replicas' contributions (a subprocess, since logical devices must be set before
    TensorFlow starts; XLA clusters cannot span two logical CPU devices, so no jit here)."""
    script = textwrap.dedent(
        """
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from keras_cvx.losses.equalization_v2 import EqualizationLossV2
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            layer = EqualizationLossV2(2)
            layer.build((None, 3))
        logits = tf.constant([[2.0, -1.0, 0.0], [0.5, 1.0, -2.0]])
        labels = tf.constant([[0], [1]])
        def replica_fn():
            i = tf.distribute.get_replica_context().replica_id_in_sync_group
            return layer(tf.gather(logits, [i]), tf.gather(labels, i), training=True)

        @tf.function
        def run():
            return strategy.run(replica_fn)

        run()
        print("POS", ",".join(str(v) for v in layer.pos_grad.numpy()))
        print("NEG", ",".join(str(v) for v in layer.neg_grad.numpy()))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, KERAS_BACKEND="tensorflow"))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line[:3] in ("POS", "NEG"))
    p = 1 / (1 + np.exp(-np.array([[2.0, -1.0], [0.5, 1.0]])))
    y = np.array([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(np.array(lines["POS"].split(","), float), np.sum(np.abs(p - 1) * y, axis=0), rtol=1e-5)
    np.testing.assert_allclose(np.array(lines["NEG"].split(","), float), np.sum(p * (1 - y), axis=0), rtol=1e-5)


@pytest.mark.parametrize("kwargs, argument", [({"num_classes": 0}, "num_classes"), ({"num_classes": 2, "gamma": 0}, "gamma"),
                                              ({"num_classes": 2, "alpha": -1}, "alpha")])
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        EqualizationLossV2(**kwargs)


def test_wrong_logit_width_is_rejected():
    with pytest.raises(ValueError, match="logits"):
        EqualizationLossV2(3)(np.zeros((2, 3), "float32"), np.zeros((2,), "int32"))
