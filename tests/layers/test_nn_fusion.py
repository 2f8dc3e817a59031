import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.layers.nn_fusion import NearestNeighborFusion
from tests.layers.test_neighbor_erasing import numpy_bilinear_resize
from tests.layers.test_neighbor_transferring import numpy_ceil_pool
from tests.test_case import run_layer_test


def _levels(seed, shapes):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype("float32") for s in shapes]


def numpy_nnfm(layer, current, shallower, deeper, pool_size=2):
    """Spec §5 in the paper's order: pool then 1×1 conv, 1×1 conv, up-sample then 1×1 conv."""
    kernel, bias = layer.current_conv.get_weights()
    out = current @ kernel[0, 0] + bias
    if shallower is not None:
        pooled = numpy_ceil_pool(shallower, pool_size, np.max)
        out = out + pooled @ layer.shallower_conv.get_weights()[0][0, 0]
    if deeper is not None:
        upsampled = numpy_bilinear_resize(deeper, current.shape[1], current.shape[2])
        out = out + upsampled @ layer.deeper_conv.get_weights()[0][0, 0]
    return np.maximum(out, 0.0)


def test_harness():
    current, shallower, deeper = _levels(0, [(2, 5, 5, 4), (2, 10, 10, 3), (2, 3, 3, 6)])
    run_layer_test(
        NearestNeighborFusion,
        {"filters": 8, "bias_initializer": "ones"},
        [current, shallower, deeper],
        expected_output_shape=(2, 5, 5, 8),
        expected_num_trainable_weights=4,
    )


@pytest.mark.parametrize(
    "shapes",
    [
        [(2, 19, 19, 4), (2, 38, 38, 3), (2, 10, 10, 5)],  # q2 at 300: p1, p2, p3
        [(1, 38, 38, 2), (1, 75, 75, 3), (1, 19, 19, 4)],  # q1 at 300: conv3_3, p1, p2
        [(1, 10, 10, 3), (1, 19, 19, 2), (1, 5, 5, 4)],  # q3 at 300
    ],
)
def test_matches_numpy(shapes):
    current, shallower, deeper = _levels(1, shapes)
    layer = NearestNeighborFusion(filters=6, bias_initializer="random_normal")
    y = ops.convert_to_numpy(layer(current, shallower, deeper))
    expected = numpy_nnfm(layer, *(x.astype(np.float64) for x in (current, shallower, deeper)))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("missing", ["shallower", "deeper"])
def test_a_missing_neighbour_is_left_out(missing):
    current, shallower, deeper = _levels(2, [(2, 5, 5, 4), (2, 10, 10, 3), (2, 3, 3, 6)])
    neighbours = {"shallower": shallower, "deeper": deeper}
    neighbours[missing] = None
    layer = NearestNeighborFusion(filters=5)
    y = ops.convert_to_numpy(layer(current, **neighbours))
    assert getattr(layer, f"{missing}_conv") is None
    expected = numpy_nnfm(layer, current.astype(np.float64), neighbours["shallower"], neighbours["deeper"])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [75, 19, 10])
def test_ceil_mode_max_pooling_equals_keras_same_pooling(size):
    """The shallower branch equals Keras MaxPooling2D(2, padding="same") then the 1×1 conv."""
    current, shallower = _levels(3, [(2, (size + 1) // 2, (size + 1) // 2, 4), (2, size, size, 3)])
    layer = NearestNeighborFusion(filters=5, activation=None)
    fused = ops.convert_to_numpy(layer(current, shallower))
    pooled = ops.convert_to_numpy(keras.layers.MaxPooling2D(2, padding="same")(shallower))
    kernel, bias = layer.current_conv.get_weights()
    expected = current @ kernel[0, 0] + bias + pooled @ layer.shallower_conv.get_weights()[0][0, 0]
    np.testing.assert_allclose(fused, expected, rtol=1e-5, atol=1e-5)


def test_pool_size_four():
    current, shallower = _levels(4, [(1, 3, 3, 2), (1, 10, 10, 3)])
    layer = NearestNeighborFusion(filters=4, pool_size=4)
    y = ops.convert_to_numpy(layer(current, shallower))
    expected = numpy_nnfm(layer, current.astype(np.float64), shallower.astype(np.float64), None, pool_size=4)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_parameter_counts_for_netnet300():
    """filters · (C_{s-1} + C_s + C_{s+1} + 1) with the SSD300 channel widths."""
    layer = NearestNeighborFusion()
    layer.build((None, 38, 38, 512), (None, 75, 75, 256), (None, 19, 19, 1024))
    assert layer.count_params() == 256 * (256 + 512 + 1024 + 1) == 459008


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="filters"):
        NearestNeighborFusion(filters=0)
    with pytest.raises(ValueError, match="pool_size"):
        NearestNeighborFusion(pool_size=0)
    with pytest.raises(ValueError, match="pool_type"):
        NearestNeighborFusion(pool_type="median")
    with pytest.raises(ValueError, match="shallower"):
        NearestNeighborFusion().build((None, 10, 10, 4), (None, 40, 40, 4))


def test_mixed_bfloat16_trains_under_jit_compile():
    keras.config.set_dtype_policy("mixed_bfloat16")
    current, deeper = keras.Input((10, 10, 8)), keras.Input((5, 5, 8))
    fused = NearestNeighborFusion(filters=4)(current, deeper=deeper)
    model = keras.Model([current, deeper], keras.layers.GlobalAveragePooling2D(dtype="float32")(fused))
    model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(2, 10, 10, 8)).astype("float32"), rng.normal(size=(2, 5, 5, 8)).astype("float32")]
    loss = model.fit(inputs, np.zeros((2, 4), "float32"), epochs=1, verbose=0).history["loss"][0]
    assert np.isfinite(loss)
