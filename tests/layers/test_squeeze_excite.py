import numpy as np
import pytest
from keras import ops

from keras_cvx.layers.squeeze_excite import SqueezeExcite
from tests.test_case import run_layer_test


def numpy_squeeze_excite(x, layer):
    w1, b1 = (np.asarray(v, np.float64) for v in layer.squeeze.get_weights())
    w2, b2 = (np.asarray(v, np.float64) for v in layer.excite.get_weights())
    z = x.reshape(x.shape[0], -1, x.shape[-1]).mean(axis=1)
    s = 1.0 / (1.0 + np.exp(-(np.maximum(z @ w1 + b1, 0.0) @ w2 + b2)))
    return x * s.reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],))


def test_harness():
    x = np.random.default_rng(0).normal(size=(2, 5, 6, 16)).astype("float32")
    outputs = run_layer_test(
        SqueezeExcite, {"reduction": 4}, x, expected_output_shape=(2, 5, 6, 16), expected_num_trainable_weights=4
    )
    assert outputs.shape == x.shape


@pytest.mark.parametrize("shape", [(3, 4, 5, 32), (2, 7, 8)])
def test_matches_numpy(shape):
    x = np.random.default_rng(1).normal(size=shape).astype("float32")
    layer = SqueezeExcite(reduction=4, kernel_initializer="random_normal")
    layer.build(shape)
    layer.squeeze.bias.assign(np.linspace(-0.5, 0.5, layer.squeeze.bias.shape[0]).astype("float32"))
    layer.excite.bias.assign(np.linspace(-1.0, 1.0, shape[-1]).astype("float32"))
    y = ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(y, numpy_squeeze_excite(x.astype(np.float64), layer), rtol=1e-5, atol=1e-6)


def test_se_resnet50_overhead_is_2530992():
    """r = 16 in the 16 bottlenecks of ResNet-50 (3×256, 4×512, 6×1024, 3×2048 channels)."""
    total = 0
    for channels, blocks in ((256, 3), (512, 4), (1024, 6), (2048, 3)):
        layer = SqueezeExcite(reduction=16)
        layer.build((None, 7, 7, channels))
        total += blocks * layer.count_params()
    assert total == 2_530_992


def test_small_channel_count_keeps_one_hidden_unit():
    layer = SqueezeExcite(reduction=16)
    layer.build((None, 4, 4, 8))
    assert layer.squeeze.units == 1


@pytest.mark.parametrize("kwargs, argument", [({"reduction": 0}, "reduction"), ({"reduction": 1.5}, "reduction")])
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        SqueezeExcite(**kwargs)


def test_rank_two_input_is_rejected():
    with pytest.raises(ValueError, match="inputs"):
        SqueezeExcite()(np.zeros((2, 4), "float32"))
