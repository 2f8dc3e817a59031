import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.layers.cosine_dense import CosineDense, l2_normalize
from tests.test_case import run_layer_test


def test_harness():
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    run_layer_test(
        CosineDense,
        {"units": 5},
        x,
        expected_output_shape=(4, 5),
        expected_num_trainable_weights=1,
        mixed_precision_output_dtype="float32",
    )


def test_matches_numpy_cosines():
    x = np.random.default_rng(1).normal(size=(3, 2, 7)).astype("float32")
    layer = CosineDense(4)
    y = ops.convert_to_numpy(layer(x))
    w = ops.convert_to_numpy(layer.kernel).astype(np.float64)
    expected = (x / np.linalg.norm(x, axis=-1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(y).max() <= 1.0 + 1e-6


def test_scale_invariant_and_zero_input_is_finite():
    layer = CosineDense(3)
    x = np.random.default_rng(2).normal(size=(2, 5)).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), ops.convert_to_numpy(layer(10 * x)), rtol=1e-5)
    zero = ops.convert_to_numpy(layer(np.zeros((1, 5), "float32")))
    np.testing.assert_array_equal(zero, 0.0)


def test_l2_normalize_gradient_is_finite_at_zero():
    if keras.backend.backend() == "jax":
        import jax

        grad = np.asarray(jax.grad(lambda v: ops.sum(l2_normalize(v)))(np.zeros((2, 3), "float32")))
    else:
        import tensorflow as tf

        v = tf.zeros((2, 3))
        with tf.GradientTape() as tape:
            tape.watch(v)
            out = ops.sum(l2_normalize(v))
        grad = tape.gradient(out, v).numpy()
    assert np.all(np.isfinite(grad))


def test_mixed_float16_uses_float32_kernel():
    keras.config.set_dtype_policy("mixed_float16")
    layer = CosineDense(3)
    x = np.random.default_rng(3).normal(size=(2, 5)).astype("float32")
    y = layer(x)
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
    w = ops.convert_to_numpy(layer.kernel)
    xh = x.astype(np.float16).astype(np.float64)
    expected = (xh / np.linalg.norm(xh, axis=-1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True))
    np.testing.assert_allclose(ops.convert_to_numpy(y), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, argument", [({"units": 0}, "units"), ({"units": 2, "epsilon": 0.0}, "epsilon")])
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        CosineDense(**kwargs)
