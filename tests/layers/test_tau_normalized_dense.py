import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.layers.tau_normalized_dense import LearnableWeightScaling, TauNormalizedDense, tau_normalized_from_dense
from tests.test_case import run_layer_test

X = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")


@pytest.mark.parametrize("tau", [0.0, 0.7, 1.0])
def test_harness(tau):
    run_layer_test(TauNormalizedDense, {"units": 5, "tau": tau}, X, expected_output_shape=(4, 5), expected_num_trainable_weights=1,
                   tolerance=1e-4)


def test_lws_harness():
    run_layer_test(LearnableWeightScaling, {}, X, expected_output_shape=(4, 6), expected_num_trainable_weights=1)


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 2.0])
def test_converted_dense_matches_numpy(tau):
    dense = keras.layers.Dense(3)
    dense(X)
    dense.bias.assign(np.array([5.0, -5.0, 1.0], "float32"))  # dropped by τ-normalisation
    layer = tau_normalized_from_dense(dense, tau=tau)
    w = ops.convert_to_numpy(dense.kernel).astype(np.float64)
    expected = X @ (w / np.linalg.norm(w, axis=0, keepdims=True) ** tau)
    np.testing.assert_allclose(ops.convert_to_numpy(layer(X)), expected, rtol=1e-5, atol=1e-5)


def test_tau_zero_is_dense_without_bias():
    dense = keras.layers.Dense(3, use_bias=False)
    np.testing.assert_allclose(ops.convert_to_numpy(tau_normalized_from_dense(dense_built(dense), 0.0)(X)),
                               ops.convert_to_numpy(dense(X)), rtol=1e-6)


def dense_built(dense):
    dense(X)
    return dense


def test_lws_scales_logits_including_bias():
    layer = LearnableWeightScaling()
    layer.build((None, 6))
    scales = np.arange(1, 7, dtype="float32")
    layer.scale.assign(scales)
    np.testing.assert_allclose(ops.convert_to_numpy(layer(X)), X * scales, rtol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="tau"):
        TauNormalizedDense(3, tau=-1)
    with pytest.raises(ValueError, match="units"):
        TauNormalizedDense(0)
    with pytest.raises(ValueError, match="dense"):
        tau_normalized_from_dense(keras.layers.Dense(3))
    with pytest.raises(ValueError, match="dense"):
        tau_normalized_from_dense(dense_built(keras.layers.Dense(3, activation="relu")))
