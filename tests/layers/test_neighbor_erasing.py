import numpy as np
import pytest
from keras import ops

from keras_cvx.layers.neighbor_erasing import NeighborErasing
from tests.test_case import run_layer_test


def numpy_bilinear_resize(image, height, width):
    """Half-pixel-centre bilinear resize (PyTorch ``align_corners=False``) of (B, h, w, C)."""

    def axis_weights(out_size, in_size):
        source = np.clip((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0.0, in_size - 1)
        low = np.floor(source).astype(int)
        high = np.minimum(low + 1, in_size - 1)
        matrix = np.zeros((out_size, in_size))
        matrix[np.arange(out_size), low] += 1.0 - (source - low)
        matrix[np.arange(out_size), high] += source - low
        return matrix

    rows, cols = axis_weights(height, image.shape[1]), axis_weights(width, image.shape[2])
    return np.einsum("yi,xj,bijc->byxc", rows, cols, image)


def numpy_nem(shallow, deep, kernel, bias):
    gate = 1.0 / (1.0 + np.exp(-(deep @ kernel.reshape(-1, 1) + bias)))
    gate = numpy_bilinear_resize(gate, shallow.shape[1], shallow.shape[2])
    return [shallow * (1.0 - gate), shallow * gate]


def _inputs(seed, shallow=(2, 10, 10, 6), deep=(2, 3, 3, 5)):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shallow).astype("float32"), rng.normal(size=deep).astype("float32")


def test_harness():
    shallow, deep = _inputs(0)
    run_layer_test(
        NeighborErasing,
        {"gate": "conv", "bias_initializer": "ones"},
        [shallow, deep],
        expected_output_shape=[(2, 10, 10, 6), (2, 10, 10, 6)],
        expected_num_trainable_weights=2,
    )


@pytest.mark.parametrize("shapes", [((2, 10, 10, 6), (2, 3, 3, 5)), ((1, 38, 38, 4), (1, 10, 10, 3)), ((1, 8, 12, 2), (1, 2, 3, 2))])
def test_matches_numpy(shapes):
    shallow, deep = _inputs(1, *shapes)
    layer = NeighborErasing()
    layer.build(shallow.shape, deep.shape)
    kernel = np.random.default_rng(2).normal(size=(shapes[1][-1],)).astype("float32")
    layer.gate_conv.set_weights([kernel.reshape(1, 1, -1, 1), np.array([0.3], "float32")])
    kept, erased = (ops.convert_to_numpy(t) for t in layer(shallow, deep))
    expected_kept, expected_erased = numpy_nem(shallow.astype(np.float64), deep.astype(np.float64), kernel, 0.3)
    np.testing.assert_allclose(kept, expected_kept, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(erased, expected_erased, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kept + erased, shallow, rtol=1e-6, atol=1e-6)


def test_gate_is_squashed_before_upsampling_as_the_paper_writes_it():
    """p^e = p_s ⊙ U(σ(G(p_s'))) (paper); the third-party order σ(G(U(p_s'))) = σ(U(G(p_s')))
    gives another gate: with logits of std 2 on 10×10 -> 38×38 the two differ by more than 0.1."""
    shallow = np.ones((1, 38, 38, 1), "float32")
    deep = np.random.default_rng(7).normal(scale=2.0, size=(1, 10, 10, 1)).astype("float32")
    layer = NeighborErasing()
    layer.build(shallow.shape, deep.shape)
    layer.gate_conv.set_weights([np.ones((1, 1, 1, 1), "float32"), np.zeros(1, "float32")])
    erased = ops.convert_to_numpy(layer(shallow, deep)[1])[..., 0]
    logits = deep.astype(np.float64)
    paper = numpy_bilinear_resize(1.0 / (1.0 + np.exp(-logits)), 38, 38)[..., 0]
    third_party = 1.0 / (1.0 + np.exp(-numpy_bilinear_resize(logits, 38, 38)))[..., 0]
    np.testing.assert_allclose(erased, paper, rtol=1e-5, atol=1e-6)
    assert np.abs(paper - third_party).max() > 0.1


@pytest.mark.parametrize("gate, reduce", [("max", np.max), ("mean", np.mean)])
def test_pooling_gates(gate, reduce):
    shallow, deep = _inputs(3, (2, 6, 6, 3), (2, 3, 3, 4))
    layer = NeighborErasing(gate=gate)
    kept, erased = (ops.convert_to_numpy(t) for t in layer(shallow, deep))
    sigma = 1.0 / (1.0 + np.exp(-reduce(deep.astype(np.float64), axis=-1, keepdims=True)))
    expected = shallow * numpy_bilinear_resize(sigma, 6, 6)
    np.testing.assert_allclose(erased, expected, rtol=1e-5, atol=1e-5)
    assert layer.count_params() == 0


@pytest.mark.parametrize("bias, kept_is_input", [(-200.0, True), (200.0, False)])
def test_gate_zero_is_identity_gate_one_erases_everything(bias, kept_is_input):
    """Spec §9: gate 0 -> NEM is the identity; gate 1 -> the shallow level becomes 0 (exactly
    under TensorFlow; JAX's bilinear resize of a constant 1 is 1 - 6e-8 at some positions)."""
    shallow, deep = _inputs(4)
    layer = NeighborErasing(kernel_initializer="zeros", bias_initializer="zeros")
    layer.build(shallow.shape, deep.shape)
    layer.gate_conv.bias.assign(np.array([bias], "float32"))
    kept, erased = (ops.convert_to_numpy(t) for t in layer(shallow, deep))
    np.testing.assert_allclose(kept, shallow if kept_is_input else 0.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(erased, 0.0 if kept_is_input else shallow, rtol=0, atol=1e-6)


def test_parameter_count_is_deep_channels_plus_one():
    layer = NeighborErasing()
    layer.build((None, 38, 38, 256), (None, 10, 10, 256))
    assert layer.count_params() == 257


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="gate"):
        NeighborErasing(gate="softmax")
    with pytest.raises(ValueError, match="shallow"):
        NeighborErasing().build((2, 4, 4), (2, 2, 2, 3))
