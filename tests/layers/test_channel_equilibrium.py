import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.layers.channel_equilibrium import ChannelEquilibrium, group_size_for
from tests.ops.compiled import run_compiled
from tests.test_case import run_layer_test

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def newton_schulz_scalar(d, steps=3):
    """p ← 1.5p − 0.5p³/d from p = 1: W = p·I when Σ_N = I/d (spec §5)."""
    p = 1.0
    for _ in range(steps):
        p = 1.5 * p - 0.5 * p**3 / d
    return p


def sigmoid(t):
    return 1.0 / (1.0 + np.exp(-t))


def numpy_channel_equilibrium(x, layer, training=True):
    """CE from the spec's equations (§2), float64, with the layer's weights.

    Returns a dict with the output, both branches, W and the IR scale s."""
    b, h, w, c = x.shape
    d = layer.group_channels
    g = c // d
    xg = x.reshape(-1, g, d)
    if training:
        whitening = []
        for k in range(g):
            cov = np.cov(xg[:, k, :].T, bias=True) + layer.epsilon * np.eye(d)
            normalized = cov / np.trace(cov)
            p = np.eye(d)
            for _ in range(layer.iterations):
                p = 1.5 * p - 0.5 * p @ p @ p @ normalized
            whitening.append(p)
        whitening = np.stack(whitening)
    else:
        whitening = np.asarray(ops.convert_to_numpy(layer.running_whitening), np.float64)
    bd = np.einsum("gij,mgj->mgi", whitening, xg).reshape(x.shape)
    v = x.reshape(b, h * w, c).var(axis=1, ddof=1)
    w1 = np.asarray(ops.convert_to_numpy(layer.reduce.kernel), np.float64)
    gamma, beta = (np.asarray(t, np.float64) for t in layer.norm.get_weights())
    w2 = np.asarray(ops.convert_to_numpy(layer.expand.kernel), np.float64)
    t = v @ w1
    t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True) + layer.epsilon) * gamma + beta
    gate = sigmoid(np.maximum(t, 0.0) @ w2)
    scale = np.sqrt(v.mean()) if training else float(ops.convert_to_numpy(layer.running_scale))
    ir = x * (gate / scale)[:, None, None, :]
    mix = sigmoid(float(ops.convert_to_numpy(layer.gate)))
    return {"output": mix * bd + (1 - mix) * ir, "bd": bd, "ir": ir, "gate": gate, "whitening": whitening, "scale": scale}


def uncorrelated_equal_variance(channels, shape=(2, 8, 8), std=3.0, seed=2):
    """Channel columns that are exactly zero-mean, orthogonal and of equal norm: Σ ∝ I."""
    m = int(np.prod(shape))
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(np.concatenate([np.ones((m, 1)), rng.normal(size=(m, channels))], axis=1))
    columns = basis[:, 1:] * np.sqrt(m) * std  # orthogonal to the constant column: zero mean
    return columns.reshape(shape + (channels,)).astype("float32")


def test_harness():
    x = np.random.default_rng(0).normal(size=(2, 4, 5, 16)).astype("float32")
    run_layer_test(
        ChannelEquilibrium,
        {"group_size": 8, "reduction": 4},
        x,
        expected_output_shape=(2, 4, 5, 16),
        expected_num_trainable_weights=5,
        expected_num_non_trainable_weights=2,
    )


@pytest.mark.tensorflow_only
def test_harness_synchronized_outside_a_strategy():
    """The default replica context: the cross-replica sum is an identity, XLA included."""
    x = np.random.default_rng(0).normal(size=(2, 4, 5, 16)).astype("float32")
    run_layer_test(
        ChannelEquilibrium,
        {"group_size": 8, "synchronized": True},
        x,
        expected_output_shape=(2, 4, 5, 16),
        run_mixed_precision_check=False,
    )


def test_training_mode_compiled_equals_eager():
    """The harness compiles inference mode; training mode (batch statistics) here."""
    x = np.random.default_rng(1).normal(size=(3, 4, 4, 12)).astype("float32")
    layer = ChannelEquilibrium()
    layer.build(x.shape)
    trainable = [ops.convert_to_numpy(v) for v in layer.trainable_variables]
    state = [ops.convert_to_numpy(v) for v in layer.non_trainable_variables]

    def forward(inputs):
        return layer.stateless_call(trainable, state, inputs, training=True)

    eager = forward(x)
    compiled = run_compiled(forward, x)
    np.testing.assert_allclose(compiled[0], ops.convert_to_numpy(eager[0]), rtol=1e-4, atol=1e-4)
    for a, b in zip(compiled[1], eager[1]):
        np.testing.assert_allclose(a, ops.convert_to_numpy(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "channels, group_size, expected", [(16, 16, 16), (24, 16, 8), (64, 64, 64), (12, 16, 4), (6, 16, 2), (96, 64, 32)]
)
def test_group_size_halves_until_it_divides(channels, group_size, expected):
    assert group_size_for(channels, group_size) == expected
    layer = ChannelEquilibrium(group_size=group_size)
    layer.build((None, 3, 3, channels))
    assert (layer.num_groups, layer.group_channels) == (channels // expected, expected)
    assert tuple(layer.running_whitening.shape) == (channels // expected, expected, expected)


def test_newton_schulz_recursion_gives_the_spec_values():
    assert newton_schulz_scalar(16) == pytest.approx(2.86506, abs=5e-6)
    assert newton_schulz_scalar(64) == pytest.approx(3.23389, abs=5e-6)


@pytest.mark.parametrize("channels, group_size, factor", [(32, 16, 2.86506), (64, 64, 3.23389)])
def test_bd_of_uncorrelated_equal_variance_channels_at_init(channels, group_size, factor):
    """Spec §5: Σ ∝ I gives Σ_N = I/d exactly, W = p_3·I, BD(x) = p_3·x (any variance, any ε),
    and CE at initialisation = 0.5·p_3·x + 0.5·IR(x)."""
    x = uncorrelated_equal_variance(channels)
    layer = ChannelEquilibrium(group_size=group_size)
    layer.build(x.shape)
    bd = ops.convert_to_numpy(layer.batch_decorrelation(ops.convert_to_tensor(x), training=True))
    np.testing.assert_allclose(bd, factor * x, rtol=1e-5, atol=5e-5)
    expected_w = np.tile(np.eye(group_size) * factor, (channels // group_size, 1, 1))
    np.testing.assert_allclose(ops.convert_to_numpy(layer.running_whitening), 0.9 * np.eye(group_size) + 0.1 * expected_w, atol=2e-5)

    fresh = ChannelEquilibrium(group_size=group_size)
    y = ops.convert_to_numpy(fresh(x, training=True))
    assert float(ops.convert_to_numpy(fresh.gate)) == 0.0
    reference = numpy_channel_equilibrium(x.astype(np.float64), fresh)
    np.testing.assert_allclose(y, 0.5 * factor * x + 0.5 * reference["ir"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("group_size", [4, 16])
def test_training_matches_numpy_and_updates_running_state(group_size):
    x = np.random.default_rng(3).normal(size=(2, 5, 6, 16)).astype("float32")
    x[..., 1] += 0.7 * x[..., 0]  # correlated channels
    x += 0.5  # non-zero mean: BD multiplies the uncentered input
    layer = ChannelEquilibrium(group_size=group_size)
    layer.build(x.shape)
    layer.gate.assign(0.3)
    y = ops.convert_to_numpy(layer(x, training=True))
    reference = numpy_channel_equilibrium(x.astype(np.float64), layer)
    np.testing.assert_allclose(y, reference["output"], rtol=2e-4, atol=2e-4)
    eye = np.tile(np.eye(group_size), (16 // group_size, 1, 1))
    running = ops.convert_to_numpy(layer.running_whitening)
    np.testing.assert_allclose(running, 0.9 * eye + 0.1 * reference["whitening"], atol=2e-5)
    np.testing.assert_allclose(float(ops.convert_to_numpy(layer.running_scale)), 0.9 + 0.1 * reference["scale"], rtol=1e-5)

    # inference afterwards: the running W and s, no batch statistics
    z = np.random.default_rng(4).normal(size=(1, 3, 3, 16)).astype("float32")
    inference = numpy_channel_equilibrium(z.astype(np.float64), layer, training=False)
    np.testing.assert_allclose(ops.convert_to_numpy(layer(z, training=False)), inference["output"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.running_whitening), running)


def test_fresh_inference_is_half_x_plus_half_x_times_gate():
    """Spec §5: running_W = I, running_scale = 1 (our init) give CE(x) = 0.5·x + 0.5·x·g(x)."""
    x = np.random.default_rng(4).normal(size=(2, 3, 4, 8)).astype("float32")
    layer = ChannelEquilibrium()
    y = ops.convert_to_numpy(layer(x, training=False))
    gate = numpy_channel_equilibrium(x.astype(np.float64), layer, training=False)["gate"]
    np.testing.assert_allclose(y, 0.5 * x + 0.5 * x * gate[:, None, None, :], rtol=1e-5, atol=1e-6)


def test_ce_resnet50_parameter_overhead():
    """Spec §2.6/§5: C²/2 + C/2 + 1 per block; stem + stages 1-3 of ResNet-50 add 3,774,894."""
    per_block = {}
    for channels, group_size in ((64, 64), (256, 16), (512, 16), (1024, 16)):
        layer = ChannelEquilibrium(group_size=group_size)
        layer.build((None, 7, 7, channels))
        per_block[channels] = sum(int(np.prod(w.shape)) for w in layer.trainable_weights)
    assert per_block == {64: 2081, 256: 32897, 512: 131329, 1024: 524801}
    assert per_block[64] + 3 * per_block[256] + 4 * per_block[512] + 6 * per_block[1024] == 3_774_894


def test_mixed_precision_statistics_stay_float32():
    x = np.random.default_rng(5).normal(size=(2, 4, 4, 16)).astype("float32")
    reference = ChannelEquilibrium(group_size=8)
    reference.build(x.shape)
    layer = ChannelEquilibrium(group_size=8, dtype="mixed_float16")
    layer.build(x.shape)
    layer.set_weights(reference.get_weights())
    expected = ops.convert_to_numpy(reference(x, training=True))
    y = layer(x, training=True)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    assert layer.running_whitening.dtype == "float32"
    np.testing.assert_allclose(ops.convert_to_numpy(ops.cast(y, "float32")), expected, rtol=5e-3, atol=5e-3)


def test_constant_input_stays_finite_with_gradients():
    x = np.ones((2, 1, 1, 8), "float32")
    layer = ChannelEquilibrium()
    assert np.all(np.isfinite(ops.convert_to_numpy(layer(x, training=True))))
    grads = input_gradient(layer, np.random.default_rng(5).normal(size=(2, 3, 3, 8)).astype("float32"))
    assert np.all(np.isfinite(grads)) and np.abs(grads).max() > 0


def input_gradient(layer, x):
    """d sum(CE(x)²)/dx in training mode."""
    if keras.backend.backend() == "jax":
        import jax

        def loss(inputs):
            y, _ = layer.stateless_call(
                [v.value for v in layer.trainable_variables],
                [v.value for v in layer.non_trainable_variables],
                inputs,
                training=True,
            )
            return ops.sum(ops.square(y))

        return np.asarray(jax.grad(loss)(x))
    import tensorflow as tf

    inputs = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        loss = ops.sum(ops.square(layer(inputs, training=True)))
    return tape.gradient(loss, inputs).numpy()


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"group_size": 0}, "group_size"),
        ({"reduction": 0}, "reduction"),
        ({"iterations": 0}, "iterations"),
        ({"iterations": 2.5}, "iterations"),
        ({"momentum": 1.5}, "momentum"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"synchronized": "yes"}, "synchronized"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        ChannelEquilibrium(**kwargs)


def test_synchronized_needs_the_tensorflow_backend():
    if keras.backend.backend() == "tensorflow":
        assert ChannelEquilibrium(synchronized=True).get_config()["synchronized"] is True
    else:
        with pytest.raises(ValueError, match="synchronized"):
            ChannelEquilibrium(synchronized=True)


def test_rank_three_input_is_rejected():
    with pytest.raises(ValueError, match="inputs"):
        ChannelEquilibrium()(np.zeros((2, 4, 8), "float32"))


@pytest.mark.tensorflow_only
def test_synchronized_under_mirrored_strategy_equals_single_device_on_concatenated_batch():
    """MirroredStrategy over two logical CPUs (set in a fresh interpreter, before TF
    initialises its devices). Replica halves with different statistics:

    * one training call in ``strategy.run``: outputs, running state and the summed
      per-replica gradients equal one device on the whole batch;
    * ``model.fit(jit_compile=False)``, one SGD step: weights and state equal one device;
    * without ``synchronized`` the replicas use their own statistics and differ.
    """
    code = textwrap.dedent(
        """
        import json, numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras
        from keras_cvx.layers.channel_equilibrium import ChannelEquilibrium
        rng = np.random.default_rng(6)
        x = rng.normal(size=(4, 3, 3, 16)).astype("float32")
        x[..., 2] += x[..., 3]
        x[2:] = 2.0 * x[2:] + 1.0
        target = rng.normal(size=x.shape).astype("float32")

        def model(synchronized):
            inputs = keras.Input((3, 3, 16))
            m = keras.Model(inputs, ChannelEquilibrium(group_size=8, synchronized=synchronized)(inputs))
            m.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=False)
            return m

        def call_and_grad(m, batch):
            with tf.GradientTape() as tape:
                y = m(batch, training=True)
                loss = tf.reduce_sum(tf.square(y))
            return y, tape.gradient(loss, m.trainable_variables)

        def arrays(values):
            return [np.asarray(v).tolist() for v in values]

        single = model(False)
        initial = single.get_weights()
        y, grads = call_and_grad(single, tf.constant(x))
        out = {"single": arrays([y] + grads + single.get_weights())}
        single.set_weights(initial)
        single.fit(x, target, batch_size=4, epochs=1, shuffle=False, verbose=0)
        out["single_fit"] = arrays(single.get_weights())

        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        for synchronized in (True, False):
            with strategy.scope():
                m = model(synchronized)
                m.set_weights(initial)

            @tf.function
            def step(batch):
                y, grads = strategy.run(call_and_grad, args=(m, batch))
                return y, [strategy.reduce("SUM", g, axis=None) for g in grads]

            y, grads = step(next(iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(x)))))
            y = np.concatenate([t.numpy() for t in strategy.experimental_local_results(y)])
            out[str(synchronized)] = arrays([y] + grads + m.get_weights())
            m.set_weights(initial)
            m.fit(x, target, batch_size=4, epochs=1, shuffle=False, verbose=0)
            out[f"{synchronized}_fit"] = arrays(m.get_weights())
        print(json.dumps(out))
        """
    )
    env = dict(os.environ, KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = {k: [np.array(a) for a in v] for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}
    # [output, 5 gradients, 5 weights, running_W, running_scale]
    assert len(out["True"]) == 13 and out["True"][0].shape == (4, 3, 3, 16)
    for synced, single in zip(out["True"], out["single"]):
        np.testing.assert_allclose(synced, single, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(single).max()))
    for synced, single in zip(out["True_fit"], out["single_fit"]):
        np.testing.assert_allclose(synced, single, rtol=1e-5, atol=1e-6)
    assert np.abs(out["False"][0] - out["single"][0]).max() > 1e-2
    assert max(np.abs(a - b).max() for a, b in zip(out["False_fit"], out["single_fit"])) > 1e-3
