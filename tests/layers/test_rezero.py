import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.layers import ReZero, ReZeroTransformerEncoder
from tests.test_case import run_layer_test


def dense_branch(width=6):
    return keras.layers.Dense(width, activation="tanh", name="branch")


def test_rezero_harness():
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    outputs = run_layer_test(
        ReZero,
        {"layer": dense_branch()},
        x,
        expected_output_shape=(4, 6),
        expected_num_trainable_weights=3,
        expected_output=x,  # the identity at initialisation
        tolerance=0.0,
    )
    np.testing.assert_array_equal(outputs, x)


def test_rezero_with_shortcut_harness_is_the_shortcut_at_init():
    """``S + α·F(x)`` with a projection shortcut: at α = 0 the output is ``S`` exactly."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(4, 6)).astype("float32")
    shortcut = rng.normal(size=(4, 3)).astype("float32")
    outputs = run_layer_test(
        ReZero,
        {"layer": keras.layers.Dense(3, activation="tanh", name="branch")},
        [x, shortcut],
        expected_output_shape=(4, 3),
        expected_num_trainable_weights=3,
        expected_output=shortcut,
        tolerance=0.0,
    )
    np.testing.assert_array_equal(outputs, shortcut)


def test_rezero_with_shortcut_matches_numpy_for_nonzero_alpha():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(5, 6)).astype("float32")
    shortcut = rng.normal(size=(5, 3)).astype("float32")
    layer = ReZero(keras.layers.Dense(3, activation="tanh"))
    layer(x, shortcut=shortcut)
    layer.alpha.assign(0.37)
    kernel, bias = (ops.convert_to_numpy(w).astype(np.float64) for w in layer.layer.weights)
    expected = shortcut + 0.37 * np.tanh(x @ kernel + bias)
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x, shortcut=shortcut)), expected, rtol=1e-5, atol=1e-6)


def test_branch_that_misses_the_shortcut_shape_is_rejected():
    with pytest.raises(ValueError, match="shortcut"):
        ReZero(keras.layers.Dense(4))(np.ones((2, 6), "float32"), shortcut=np.ones((2, 3), "float32"))


def test_rezero_is_identity_for_a_deep_stack():
    x = np.random.default_rng(1).normal(size=(3, 8)).astype("float32")
    inputs = keras.Input((8,))
    h = inputs
    for i in range(50):
        h = ReZero(keras.layers.Dense(8, activation="relu", name=f"f{i}"))(h)
    model = keras.Model(inputs, h)
    np.testing.assert_array_equal(ops.convert_to_numpy(model(x)), x)


def test_first_sgd_step_moves_only_alpha():
    """dL/dα = Σ dL/dy ⊙ F(x) ≠ 0, while F's gradients are scaled by α = 0 (spec §2.1)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 6)).astype("float32")
    target = rng.normal(size=(8, 6)).astype("float32")
    layer = ReZero(dense_branch())
    model = keras.Sequential([keras.Input((6,)), layer])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=True)
    kernel, bias = (np.array(ops.convert_to_numpy(w)) for w in layer.layer.weights)
    model.fit(x, target, batch_size=8, epochs=1, verbose=0)
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.layer.kernel), kernel)
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.layer.bias), bias)
    # The α update equals −lr · dL/dα computed by hand with NumPy.
    branch = np.tanh(x @ kernel + bias)
    grad_alpha = np.sum(2.0 * (x - target) / x.size * branch)
    np.testing.assert_allclose(float(ops.convert_to_numpy(layer.alpha)), -0.1 * grad_alpha, rtol=1e-5)


def test_alpha_stays_float32_under_mixed_precision():
    layer = ReZero(dense_branch(), dtype="mixed_float16")
    y = layer(np.ones((2, 6), "float32"))
    assert layer.alpha.dtype == "float32"
    assert keras.backend.standardize_dtype(y.dtype) == "float16"


def test_branch_that_changes_shape_is_rejected():
    with pytest.raises(ValueError, match="layer"):
        ReZero(keras.layers.Dense(3))(np.ones((2, 6), "float32"))


def test_non_layer_is_rejected():
    with pytest.raises(ValueError, match="layer"):
        ReZero("dense")


def test_encoder_harness():
    x = np.random.default_rng(3).normal(size=(2, 5, 8)).astype("float32")
    run_layer_test(
        ReZeroTransformerEncoder,
        {"num_heads": 2, "feedforward_dim": 16, "dropout": 0.0},
        x,
        expected_output_shape=(2, 5, 8),
        # 8 attention tensors, 2 + 2 feed-forward tensors, α.
        expected_num_trainable_weights=13,
        expected_output=x,
        tolerance=0.0,
    )


def value(variable):
    return np.asarray(ops.convert_to_numpy(variable), np.float64)


def numpy_dense(x, dense, equation):
    return np.einsum(equation, x, value(dense.kernel)) + value(dense.bias)


def numpy_encoder(x, layer, padding_mask):
    """RZTXEncoderLayer without dropout, written from the spec with the layer's weights."""
    attention = layer.attention
    q = numpy_dense(x, attention.query_dense, "bld,dhk->blhk")
    k = numpy_dense(x, attention.key_dense, "bld,dhk->blhk")
    v = numpy_dense(x, attention.value_dense, "bld,dhk->blhk")
    scores = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(padding_mask[:, None, None, :], scores, -1e9)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    context = np.einsum("bhqs,bshk->bqhk", weights, v)
    attended = numpy_dense(context, attention.output_dense, "bqhk,hkd->bqd")
    alpha = float(value(layer.alpha))
    hidden = x + alpha * attended
    inner = np.maximum(numpy_dense(hidden, layer.feedforward_in, "bld,df->blf"), 0)
    return hidden + alpha * numpy_dense(inner, layer.feedforward_out, "blf,fd->bld")


def test_encoder_matches_numpy_with_nonzero_alpha_and_padding():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 6, 8)).astype("float32")
    padding_mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], bool)
    layer = ReZeroTransformerEncoder(num_heads=2, feedforward_dim=12, dropout=0.0)
    layer.build(x.shape)
    layer.alpha.assign(0.7)
    for variable in layer.trainable_weights:
        as_numpy = ops.convert_to_numpy(variable)
        variable.assign(as_numpy + rng.normal(scale=0.1, size=as_numpy.shape).astype("float32"))
    y = ops.convert_to_numpy(layer(x, padding_mask=padding_mask))
    np.testing.assert_allclose(y, numpy_encoder(x.astype(np.float64), layer, padding_mask), rtol=2e-4, atol=2e-4)


def test_encoder_padding_keys_do_not_change_real_tokens():
    rng = np.random.default_rng(5)
    layer = ReZeroTransformerEncoder(num_heads=2, feedforward_dim=12, dropout=0.0)
    x = rng.normal(size=(1, 6, 8)).astype("float32")
    layer.build(x.shape)
    layer.alpha.assign(1.0)
    mask = np.array([[1, 1, 1, 0, 0, 0]], bool)
    changed = x.copy()
    changed[:, 3:] = rng.normal(size=(1, 3, 8))
    a = ops.convert_to_numpy(layer(x, padding_mask=mask))[:, :3]
    b = ops.convert_to_numpy(layer(changed, padding_mask=mask))[:, :3]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, argument",
    [({"num_heads": 0}, "num_heads"), ({"num_heads": 2, "dropout": 1.0}, "dropout"),
     ({"num_heads": 2, "feedforward_dim": -1}, "feedforward_dim")],
)
def test_encoder_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        ReZeroTransformerEncoder(**kwargs)


def test_encoder_width_must_divide_into_heads():
    with pytest.raises(ValueError, match="num_heads"):
        ReZeroTransformerEncoder(num_heads=3)(np.zeros((1, 4, 8), "float32"))


@pytest.mark.jax_only  # TensorFlow traces this 32-layer step for ~50 s; JAX compiles it in ~10 s
def test_deep_rezero_transformer_trains_without_warmup():
    """32 ReZero encoder layers, no LayerNorm, no warm-up, constant learning rate: the loss is
    finite from step 0 on and falls well below chance.

    Toy task: at every position predict the first token of the sequence (needs attention).
    """
    keras.utils.set_random_seed(0)
    vocabulary, length, width = 8, 6, 16
    tokens = np.random.default_rng(0).integers(0, vocabulary, size=(64, length))
    targets = np.repeat(tokens[:, :1], length, axis=1)
    inputs = keras.Input((length,), dtype="int32")
    h = keras.layers.Embedding(vocabulary, width)(inputs)
    h = h + keras.layers.Embedding(length, width)(ops.arange(length))[None]
    for _ in range(32):
        h = ReZeroTransformerEncoder(num_heads=2, feedforward_dim=32, dropout=0.0)(h)
    model = keras.Model(inputs, keras.layers.Dense(vocabulary)(h))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    history = model.fit(tokens, targets, batch_size=64, epochs=20, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)), history
    # Step 0 sees the identity stack: the loss is the embedding + head's, near chance ln 8.
    assert abs(history[0] - np.log(vocabulary)) < 0.1, history
    assert min(history) < 0.7 * np.log(vocabulary), history
