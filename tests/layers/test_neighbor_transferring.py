import math

import numpy as np
import pytest
from keras import ops

from keras_cvx.layers.neighbor_transferring import NeighborTransferring, ceil_pool2d
from tests.test_case import run_layer_test


def numpy_ceil_pool(x, r, reduce):
    """PyTorch ``ceil_mode=True`` pooling (kernel = stride = r, no padding), with loops."""
    height, width = math.ceil(x.shape[1] / r), math.ceil(x.shape[2] / r)
    out = np.zeros((x.shape[0], height, width, x.shape[3]))
    for i in range(height):
        for j in range(width):
            out[:, i, j] = reduce(x[:, i * r : (i + 1) * r, j * r : (j + 1) * r], axis=(1, 2))
    return out


def numpy_conv_same(x, kernel, bias):
    k = kernel.shape[0]
    padded = np.pad(x, [(0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)])
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],)) + bias
    for dy in range(k):
        for dx in range(k):
            out += padded[:, dy : dy + x.shape[1], dx : dx + x.shape[2]] @ kernel[dy, dx]
    return out


def _inputs(seed, erased=(2, 10, 10, 4), deep=(2, 3, 3, 5)):
    rng = np.random.default_rng(seed)
    return rng.normal(size=erased).astype("float32"), rng.normal(size=deep).astype("float32")


def test_harness():
    erased, deep = _inputs(0)
    run_layer_test(
        NeighborTransferring,
        {"pool_type": "avg", "kernel_size": 3},
        [erased, deep],
        expected_output_shape=(2, 3, 3, 5),
        expected_num_trainable_weights=2,
    )


@pytest.mark.parametrize("pool_type, reduce", [("avg", np.mean), ("max", np.max)])
@pytest.mark.parametrize("shapes", [((2, 10, 10, 4), (2, 3, 3, 5)), ((1, 38, 38, 3), (1, 10, 10, 2)), ((1, 19, 7, 2), (1, 5, 2, 3))])
def test_matches_numpy(pool_type, reduce, shapes):
    erased, deep = _inputs(1, *shapes)
    layer = NeighborTransferring(pool_type=pool_type, bias_initializer="random_normal")
    y = ops.convert_to_numpy(layer(erased, deep))
    kernel, bias = layer.transfer_conv.get_weights()
    pooled = numpy_ceil_pool(erased.astype(np.float64), 4, reduce)
    expected = deep + np.maximum(numpy_conv_same(pooled, kernel, bias), 0.0)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_ceil_pool_border_windows_use_in_image_elements_only():
    x = np.arange(5, dtype="float32").reshape(1, 1, 5, 1)  # windows [0, 1], [2, 3], [4]
    np.testing.assert_allclose(ops.convert_to_numpy(ceil_pool2d(x, 2, "avg"))[0, 0, :, 0], [0.5, 2.5, 4.0])
    np.testing.assert_allclose(ops.convert_to_numpy(ceil_pool2d(-x, 2, "max"))[0, 0, :, 0], [0.0, -2.0, -4.0])


def test_zero_erased_part_adds_activation_of_bias():
    """Spec §9: with the NEM gate at 0 the erased part is 0 and NTM adds T(0) = ReLU(bias)."""
    _, deep = _inputs(2)
    layer = NeighborTransferring()
    layer.build((2, 10, 10, 4), deep.shape)
    kernel = np.random.default_rng(3).normal(size=layer.transfer_conv.kernel.shape).astype("float32")
    bias = np.array([-0.5, 0.25, -0.125, 1.0, 0.0], "float32")  # both signs and exactly 0
    layer.transfer_conv.set_weights([kernel, bias])
    y = ops.convert_to_numpy(layer(np.zeros((2, 10, 10, 4), "float32"), deep))
    np.testing.assert_allclose(y, deep + np.maximum(bias, 0.0), rtol=1e-6, atol=1e-6)


def test_explicit_pool_size_and_parameter_count():
    layer = NeighborTransferring(pool_size=2)
    layer.build((None, 38, 38, 256), (None, 19, 19, 256))
    assert layer.count_params() == 9 * 256 * 256 + 256
    with pytest.raises(ValueError, match="pool_size"):
        NeighborTransferring(pool_size=2).build((None, 38, 38, 8), (None, 10, 10, 8))


@pytest.mark.parametrize(
    "kwargs, argument",
    [({"pool_size": 0}, "pool_size"), ({"pool_type": "sum"}, "pool_type"), ({"kernel_size": 0}, "kernel_size")],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        NeighborTransferring(**kwargs)
