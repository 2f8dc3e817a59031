"""Tests for keras_cvx.layers.instance_aware_conv.InstanceAwareConv: parameter counts of the
specified defaults, the depth-to-space order of the template, depthwise and full products at
gathered points (2 images, 3 levels, borders, corners, 3 weight sets) against dense Keras
``Conv2D`` convolutions carrying the layer's kernels and NumPy products, argument errors,
gradients, and the shared harness (config, symbolic, jit, fit, mixed precision, .keras)."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.layers.instance_aware_conv import InstanceAwareConv
from tests.test_case import run_layer_test

LEVEL_SIZES = ((5, 6), (3, 3), (1, 2))  # (H, W) of 3 levels
C_IN = 8


def _features(rng, batch=2):
    return [rng.normal(size=(batch, h, w, C_IN)).astype("float32") for h, w in LEVEL_SIZES]


def _dense_per_location(features, kernel, bias):
    """Keras Conv2D ("same", stride 1) with the given kernel on every level, flattened per
    image in (level, row, column) order: ``[B, N, C_out]``."""
    conv = keras.layers.Conv2D(kernel.shape[-1], 3, padding="same")
    conv.build((None, None, None, kernel.shape[2]))
    conv.set_weights([np.asarray(kernel), np.asarray(bias)])
    maps = [np.asarray(ops.convert_to_numpy(conv(f)), np.float64) for f in features]
    return np.concatenate([m.reshape(m.shape[0], -1, m.shape[-1]) for m in maps], axis=1)


def _randomise(layer, rng, scale=0.3):
    for weight in (layer.template_kernel, layer.template_bias, layer.weights_kernel, layer.weights_bias):
        weight.assign(rng.normal(0, scale, weight.shape).astype("float32"))


def _points():
    # locations per image: level 0 has 30 (0..29), level 1 has 9 (30..38), level 2 has 2 (39, 40)
    image = np.array([0, 1, 0, 1, 1, 0, 0, 1, 1], "int32")
    location = np.array([0, 5, 29, 14, 30, 34, 38, 39, 40], "int32")  # corners, borders, interior, 1-row level
    weight_set = np.array([0, 2, 1, 1, 2, 0, 2, 1, 0], "int32")
    return image, location, weight_set


def test_parameter_counts_of_the_specified_defaults():
    fcos = InstanceAwareConv()
    fcos.build([(2, 16, 16, 256), (2, 8, 8, 256)])
    assert int(np.prod(fcos.template_kernel.shape)) + int(np.prod(fcos.template_bias.shape)) == 5_310_720
    assert int(np.prod(fcos.weights_kernel.shape)) + int(np.prod(fcos.weights_bias.shape)) == 590_080
    assert fcos.count_params() == 5_310_720 + 590_080
    retina = InstanceAwareConv(num_weight_sets=9)
    retina.build([(2, 16, 16, 256)])
    assert tuple(retina.weights_kernel.shape) == (3, 3, 256, 2304)
    assert retina.count_params() == 5_310_720 + 5_310_720
    # kernels of equal shape start from different values (one initializer each)
    assert not np.array_equal(ops.convert_to_numpy(retina.template_kernel), ops.convert_to_numpy(retina.weights_kernel))
    full = InstanceAwareConv(template_channels=16, weight_type="full", output_channels=8, num_weight_sets=2)
    full.build([(1, 4, 4, 32)])
    assert tuple(full.weights_kernel.shape) == (3, 3, 32, 2 * (16 * 8 + 8))
    # initial weights N(0, 0.01), biases 0
    kernel = np.asarray(ops.convert_to_numpy(fcos.template_kernel))
    assert abs(kernel.std() - 0.01) < 0.0005 and abs(kernel.mean()) < 0.0005
    assert not np.any(ops.convert_to_numpy(fcos.weights_bias))


def test_template_depth_to_space_order():
    k, c = 3, 4
    layer = InstanceAwareConv(template_size=k, template_channels=c, num_weight_sets=1)
    features = [np.ones((1, 4, 4, C_IN), "float32")]
    layer.build([f.shape for f in features])
    layer.template_kernel.assign(np.zeros(layer.template_kernel.shape, "float32"))
    layer.template_bias.assign(np.arange(k * k * c, dtype="float32"))  # channel q carries the value q
    layer.weights_kernel.assign(np.zeros(layer.weights_kernel.shape, "float32"))
    layer.weights_bias.assign(np.ones(layer.weights_bias.shape, "float32"))  # W = 1: F = T
    out = np.asarray(ops.convert_to_numpy(layer(features, np.array([0]), np.array([5]))))
    assert out.shape == (1, k, k, c)
    for u in range(k):
        for v in range(k):
            for ch in range(c):
                assert out[0, u, v, ch] == (u * k + v) * c + ch


@pytest.mark.parametrize("weight_type", ["depthwise", "full"])
def test_products_at_points_match_dense_convolutions(weight_type):
    rng = np.random.default_rng(0)
    k, c, sets = 2, 3, 3
    c_out = 5 if weight_type == "full" else None
    layer = InstanceAwareConv(template_size=k, template_channels=c, num_weight_sets=sets, weight_type=weight_type,
                              output_channels=c_out)
    features = _features(rng)
    layer.build([f.shape for f in features])
    _randomise(layer, rng)
    image, location, weight_set = _points()
    out = np.asarray(ops.convert_to_numpy(layer(features, image, location, weight_set)))

    as_numpy = [np.asarray(ops.convert_to_numpy(w)) for w in
                (layer.template_kernel, layer.template_bias, layer.weights_kernel, layer.weights_bias)]
    template = _dense_per_location(features, as_numpy[0], as_numpy[1])[image, location]  # [P, k k c]
    weights = _dense_per_location(features, as_numpy[2], as_numpy[3])[image, location]  # [P, sets C_w]
    template = template.reshape(-1, k, k, c)  # depth_to_space: q = (u k + v) c + channel
    chosen = weights.reshape(len(image), sets, -1)[np.arange(len(image)), weight_set]
    if weight_type == "depthwise":
        expected = template * chosen[:, None, None, :]
    else:
        matrix = chosen[:, : c * c_out].reshape(-1, c, c_out)
        bias = chosen[:, c * c_out :]
        expected = np.einsum("puvc,pco->puvo", template, matrix) + bias[:, None, None, :]
    assert out.shape == (len(image), k, k, c_out or c)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_single_weight_set_ignores_missing_index_and_clamps_out_of_range_points():
    rng = np.random.default_rng(1)
    layer = InstanceAwareConv(template_size=3, template_channels=2, num_weight_sets=1)
    features = _features(rng)
    layer.build([f.shape for f in features])
    _randomise(layer, rng)
    a = ops.convert_to_numpy(layer(features, np.array([1, 0]), np.array([40, 0])))
    b = ops.convert_to_numpy(layer(features, np.array([5, -3]), np.array([99, -7])))  # clamped to the same points
    np.testing.assert_allclose(a, b)
    assert np.all(np.isfinite(b))


def test_argument_errors_name_the_argument():
    for kwargs, name in [
        (dict(template_size=0), "template_size"),
        (dict(template_channels=2.5), "template_channels"),
        (dict(num_weight_sets=True), "num_weight_sets"),
        (dict(weight_type="grouped"), "weight_type"),
        (dict(weight_type="full"), "output_channels"),
        (dict(weight_type="full", output_channels=0), "output_channels"),
        (dict(template_channels=8, output_channels=4), "output_channels"),
    ]:
        with pytest.raises(ValueError, match=name):
            InstanceAwareConv(**kwargs)
    assert InstanceAwareConv(template_channels=8, output_channels=8).out_channels == 8
    with pytest.raises(ValueError, match="features"):
        InstanceAwareConv().build([(1, 4, 4, 8), (1, 2, 2, 16)])
    with pytest.raises(ValueError, match="features"):
        InstanceAwareConv().build([(1, None, 4, 8)])


def _gradients(layer, features, image, location, weight_set):
    """Gradients of sum(out^2) with respect to every trainable weight, by the backend's own tool."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(layer(features, image, location, weight_set)))
        return [np.asarray(g) for g in tape.gradient(loss, layer.trainable_weights)]
    import jax

    def loss(trainable):
        out, _ = layer.stateless_call(trainable, [], features, image, location, weight_set)
        return jax.numpy.sum(out**2)

    return [np.asarray(g) for g in jax.grad(loss)([w.value for w in layer.trainable_weights])]


def test_gradients_reach_both_kernels():
    rng = np.random.default_rng(2)
    layer = InstanceAwareConv(template_size=2, template_channels=3, num_weight_sets=3)
    features = _features(rng)
    layer.build([f.shape for f in features])
    _randomise(layer, rng)
    image, location, weight_set = _points()
    grads = dict(zip([w.name for w in layer.trainable_weights],
                     _gradients(layer, features, image, location, weight_set)))
    assert set(grads) == {"template_kernel", "template_bias", "weights_kernel", "weights_bias"}
    for name, grad in grads.items():
        assert np.all(np.isfinite(grad)) and np.any(grad != 0), name
    # only the selected weight sets receive gradient: set columns of the weights bias
    used = np.zeros(3, bool)
    used[weight_set] = True
    per_set = np.abs(grads["weights_bias"]).reshape(3, 3).sum(axis=1)
    assert np.all((per_set > 0) == used)


def test_layer_harness():
    rng = np.random.default_rng(3)
    # 3 images and 3 points, so that every input has the same batch size for fit/predict
    features = [rng.normal(size=(3, 4, 5, 6)).astype("float32"), rng.normal(size=(3, 2, 3, 6)).astype("float32")]
    inputs = [features, np.array([0, 2, 1], "int32"), np.array([0, 19, 25], "int32"), np.array([1, 0, 1], "int32")]
    run_layer_test(InstanceAwareConv,
                   dict(template_size=2, template_channels=3, num_weight_sets=2, weight_type="full",
                        output_channels=2),
                   inputs, expected_output_shape=(3, 2, 2, 2), expected_num_trainable_weights=4)
    layer = InstanceAwareConv(template_size=2, template_channels=3)
    assert layer.compute_output_shape([(3, 4, 5, 6)], (7,), (7,)) == (7, 2, 2, 3)
