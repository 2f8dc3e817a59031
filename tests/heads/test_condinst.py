"""Tests for keras_cvx.heads.condinst: the parameter counts of CondInst's controller (389,545),
mask branch (1,477,384 + 1,792 BN statistics) and semantic head (453,200); forward passes
against NumPy (controller order, the P3-P5 fusion with aligned_bilinear, BN at inference);
the layer harness."""

import numpy as np
import pytest
from keras import ops

from keras_cvx.heads.condinst import CondInstController, CondInstMaskBranch, CondInstSemanticHead
from tests.numpy_layers import aligned_bilinear, batch_norm, conv2d
from tests.test_case import run_layer_test

P3_TO_P7 = [(None, s, s, 256) for s in (16, 8, 4, 2, 1)]


def _count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


@pytest.mark.single_backend  # large convs initialise slowly under JAX; counts are backend-free
def test_parameter_counts():
    controller = CondInstController()
    controller.build(P3_TO_P7)
    assert controller.num_params == 169 and controller.count_params() == 389_545  # 256 * 169 * 9 + 169
    branch = CondInstMaskBranch()
    branch.build(P3_TO_P7[:3])
    assert (branch.channels, branch.out_channels, branch.num_convs) == (128, 8, 4)
    assert _count(branch.trainable_weights) == 1_477_384
    assert _count(branch.non_trainable_weights) == 1_792
    semantic = CondInstSemanticHead(80)
    semantic.build(P3_TO_P7[0])
    assert _count(semantic.trainable_weights) == 453_200
    np.testing.assert_allclose(ops.convert_to_numpy(semantic.logits.bias), -4.59512, atol=1e-5)


def _weights(layer):
    return [np.asarray(ops.convert_to_numpy(w), np.float64) for w in layer.weights]


def _randomise(layer, rng):
    for w in layer.weights:
        values = rng.normal(0, 0.5, w.shape)
        if "variance" in w.path:
            values = rng.uniform(0.5, 2.0, w.shape)
        w.assign(values.astype("float32"))


def _conv_bn_relu(x, conv, norm):
    return np.maximum(batch_norm(conv2d(x, *_weights(conv)), *_weights(norm)), 0)


def test_controller_matches_numpy():
    rng = np.random.default_rng(0)
    maps = [rng.normal(size=(2, 3, 4, 6)).astype("float32"), rng.normal(size=(2, 2, 2, 6)).astype("float32")]
    controller = CondInstController(num_params=5)
    controller.build([m.shape for m in maps])
    _randomise(controller, rng)
    expected = np.concatenate([conv2d(m, *_weights(controller.conv)).reshape(2, -1, 5) for m in maps], 1)
    np.testing.assert_allclose(ops.convert_to_numpy(controller(maps)), expected, rtol=1e-4, atol=1e-4)


def test_mask_branch_matches_numpy():
    rng = np.random.default_rng(1)
    maps = [rng.normal(size=(2, 8, 6, 4)).astype("float32"), rng.normal(size=(2, 4, 3, 4)).astype("float32"),
            rng.normal(size=(2, 2, 2, 4)).astype("float32")]  # P5 2x2 -> 8x8, cropped to 8x6
    branch = CondInstMaskBranch(channels=4, out_channels=3, num_convs=2)
    branch.build([m.shape for m in maps])
    _randomise(branch, rng)
    x = _conv_bn_relu(maps[0], *branch.refine[0])
    for i in (1, 2):
        x = x + aligned_bilinear(_conv_bn_relu(maps[i], *branch.refine[i]), 2**i)[:, :8, :6]
    for conv, norm in zip(branch.tower[::2], branch.tower[1::2]):
        x = _conv_bn_relu(x, conv, norm)
    expected = conv2d(x, *_weights(branch.output_conv))
    out = branch(maps, training=False)
    assert tuple(out.shape) == (2, 8, 6, 3)
    np.testing.assert_allclose(ops.convert_to_numpy(out), expected, rtol=1e-4, atol=1e-4)


def test_semantic_head_matches_numpy():
    rng = np.random.default_rng(2)
    p3 = rng.normal(size=(1, 4, 5, 6)).astype("float32")
    head = CondInstSemanticHead(3, channels=4)
    head.build(p3.shape)
    _randomise(head, rng)
    x = _conv_bn_relu(_conv_bn_relu(p3, *head.blocks[:2]), *head.blocks[2:])
    np.testing.assert_allclose(ops.convert_to_numpy(head(p3, training=False)), conv2d(x, *_weights(head.logits)),
                               rtol=1e-4, atol=1e-4)


def test_layer_harness():
    rng = np.random.default_rng(3)
    maps = [rng.normal(size=(2, 4 >> i, 4 >> i, 8)).astype("float32") for i in range(3)]
    run_layer_test(CondInstController, dict(num_params=7), maps, expected_output_shape=(2, 21, 7),
                   expected_num_trainable_weights=2)
    run_layer_test(CondInstMaskBranch, dict(channels=8, out_channels=4, num_convs=1), maps,
                   expected_output_shape=(2, 4, 4, 4),
                   # 3 refine + 1 tower blocks x (conv kernel, BN gamma, BN beta) + output kernel, bias
                   expected_num_trainable_weights=3 * 4 + 2,
                   expected_num_non_trainable_weights=2 * 4, tolerance=1e-4)
    run_layer_test(CondInstSemanticHead, dict(num_classes=3, channels=8), maps[0],
                   expected_output_shape=(2, 4, 4, 3), expected_num_trainable_weights=2 * 3 + 2,
                   expected_num_non_trainable_weights=4, tolerance=1e-4)
    with pytest.raises(ValueError, match="num_params"):
        CondInstController(num_params=0)
