import numpy as np
import pytest
from keras import ops

from keras_cvx.layers.l2_normalization import L2Normalization
from tests.test_case import run_layer_test


def numpy_l2_normalization(x, gamma, epsilon=1e-10):
    return gamma * x / np.sqrt((x**2).sum(axis=-1, keepdims=True) + epsilon)


def test_harness():
    x = np.random.default_rng(0).normal(size=(2, 5, 6, 8)).astype("float32")
    expected = numpy_l2_normalization(x.astype(np.float64), 20.0)
    run_layer_test(
        L2Normalization,
        {"scale_init": 20.0},
        x,
        expected_output_shape=(2, 5, 6, 8),
        expected_output=expected,
        expected_num_trainable_weights=1,
        tolerance=1e-4,
    )


def test_learned_scale_per_channel_and_unit_norm():
    x = np.random.default_rng(1).normal(size=(3, 4, 4, 6)).astype("float32")
    layer = L2Normalization(scale_init=1.0)
    layer.build(x.shape)
    gamma = np.arange(1, 7, dtype="float32")
    layer.gamma.assign(gamma)
    y = ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(y, numpy_l2_normalization(x.astype(np.float64), gamma), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(y / gamma, axis=-1), 1.0, rtol=1e-5)


def test_large_activations_do_not_overflow_under_float16():
    x = np.full((1, 2, 2, 512), 300.0, "float32")  # Σx² = 4.6e7 > float16 max
    y = ops.convert_to_numpy(ops.cast(L2Normalization(dtype="mixed_float16")(x), "float32"))
    np.testing.assert_allclose(y, 20.0 / np.sqrt(512.0), rtol=1e-3)


def test_channels_first_axis():
    x = np.random.default_rng(2).normal(size=(2, 3, 4, 4)).astype("float32")
    y = ops.convert_to_numpy(L2Normalization(scale_init=2.0, axis=1)(x))
    expected = 2.0 * x / np.sqrt((x.astype(np.float64) ** 2).sum(axis=1, keepdims=True) + 1e-10)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_zero_vector_gives_zero():
    y = ops.convert_to_numpy(L2Normalization()(np.zeros((1, 2, 2, 4), "float32")))
    np.testing.assert_array_equal(y, 0.0)


@pytest.mark.parametrize("kwargs, argument", [({"scale_init": 0.0}, "scale_init"), ({"epsilon": -1.0}, "epsilon")])
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        L2Normalization(**kwargs)
