import json
import os
import subprocess
import sys
import tempfile

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
        [labels, logits],
        expected_output_shape=(6,),
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=2,
        mixed_precision_output_dtype="float32",
    )


def test_first_step_is_plain_bce_then_matches_numpy_over_steps():
    layer, reference = EqualizationLossV2(3), NumpyEQLv2(3)
    for step in range(4):
        logits, labels = _data(step, rois=10)
        labels[step] = -1  # one padding row per step
        value = float(ops.convert_to_numpy(ops.mean(layer(labels, logits, training=True))))
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
    layer(labels, logits, training=False)
    np.testing.assert_array_equal(layer.statistics()["pos_neg_ratio"], 100.0)
    np.testing.assert_array_equal(layer.statistics()["pos_grad"], 0.0)


def test_rare_class_negatives_are_down_weighted_after_training():
    """A class never seen as positive gets g = 0 -> neg_w = σ(−γμ) ≈ 6.8e-5, pos_w ≈ 1 + α."""
    layer = EqualizationLossV2(2)
    logits = np.zeros((8, 3), "float32")
    labels = np.array([0, 0, 0, 2, 2, 2, 2, 0], "int32")
    layer(labels, logits, training=True)
    pos_w, neg_w = (ops.convert_to_numpy(t) for t in layer.class_weights())
    np.testing.assert_allclose(neg_w[1], 1 / (1 + np.exp(12 * 0.8)), rtol=1e-5)
    np.testing.assert_allclose(pos_w[1], 1 + 4 * (1 - neg_w[1]), rtol=1e-6)
    assert neg_w[0] > neg_w[1]


def test_statistics_survive_keras_save_and_load():
    logits, labels = _data(1, rois=8)
    inputs = [keras.Input((), dtype="int32"), keras.Input((4,))]
    layer = EqualizationLossV2(3)
    model = keras.Model(inputs, layer(*inputs))
    layer(labels, logits, training=True)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.keras")
        model.save(path)
        restored = keras.saving.load_model(path, safe_mode=True)
    restored_layer = restored.layers[-1]
    for name, value in layer.statistics().items():
        np.testing.assert_array_equal(restored_layer.statistics()[name], value)
    np.testing.assert_allclose(
        ops.convert_to_numpy(restored.predict([labels, logits], verbose=0)),
        ops.convert_to_numpy(layer(labels, logits)),
        rtol=1e-6,
    )


EQL_TRAINER_RUN = """
import json, sys, tensorflow as tf
if sys.argv[1] == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
from keras import ops
from keras_cvx.losses.equalization_v2 import EqualizationLossV2
from keras_cvx.losses.replicas import replica_share
from keras_cvx.training.trainer import Trainer

class Classifier(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(4, kernel_initializer=keras.initializers.RandomNormal(seed=1))
        self.eql = EqualizationLossV2(3)
    def call(self, x, training=False):
        return self.dense(x)
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return replica_share(ops.mean(self.eql(y, y_pred, training=training)))

rng = np.random.default_rng(0)
x = rng.normal(size=(8, 5)).astype("float32")
y = np.array([0, 1, 3, 0, 2, 3, 3, 0], "int32")  # replica 0 sees no class 2, replica 1 no class 1
strategy = (tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if sys.argv[1] == "mirrored"
            else tf.distribute.get_strategy())
with strategy.scope():
    model = Classifier()
    model(x[:1]); model.eql.build((None,), (None, 4))
    optimizer = keras.optimizers.SGD(0.5)
Trainer(model, optimizer, strategy, jit_compile=True, verbose=0).fit(tf.data.Dataset.from_tensors((x, y)).repeat(), 2)
print(json.dumps({k: v.tolist() for k, v in model.eql.statistics().items()} | {"kernel": model.dense.kernel.numpy().tolist()}))
"""


@pytest.mark.tensorflow_only
def test_statistics_summed_across_replicas_every_step():
    """The Trainer on 2 logical CPU replicas (each with half of the batch and classes the other
    lacks) gives the statistics and weights of 1 device on the whole batch after 2 steps: the
    second step weighs the loss with the global statistics on both replicas."""
    results = {}
    for mode in ("single", "mirrored"):
        done = subprocess.run([sys.executable, "-c", EQL_TRAINER_RUN, mode], capture_output=True, text=True,
                              timeout=300, env=dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2"),
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        assert done.returncode == 0, done.stderr[-3000:]
        results[mode] = {k: np.array(v) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}
    assert (results["single"]["pos_grad"] > 0).all()
    for key, value in results["single"].items():
        np.testing.assert_allclose(results["mirrored"][key], value, rtol=1e-5, atol=1e-7, err_msg=key)


@pytest.mark.parametrize("kwargs, argument", [({"num_classes": 0}, "num_classes"), ({"num_classes": 2, "gamma": 0}, "gamma"),
                                              ({"num_classes": 2, "alpha": -1}, "alpha")])
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        EqualizationLossV2(**kwargs)


def test_wrong_logit_width_is_rejected():
    with pytest.raises(ValueError, match="logits"):
        EqualizationLossV2(3)(np.zeros((2,), "int32"), np.zeros((2, 3), "float32"))
