"""Tests for keras_cvx.heads.roi_box: the 2fc sibling box head's parameter count (14,310,805 for
K = 80 on 7x7x256, FPN arXiv 1612.03144 Sec. 4.2 / TSD arXiv 2003.07540 Sec. 7), its outputs
per classifier, its initial probabilities and weight statistics, the forward pass against
NumPy (with the documented PyTorch flatten-order permutation) and the layer harness."""

import math

import numpy as np
import pytest
from keras import ops

from keras_cvx.heads.roi_box import SiblingBoxHead
from tests.test_case import run_layer_test


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


def _count(head):
    return sum(int(np.prod(w.shape)) for w in head.weights)


def test_parameter_count_k80():
    head = SiblingBoxHead(80)
    head.build((None, 512, 7, 7, 256))
    assert head.num_outputs == 81 and head.box_pred.units == 324  # mmdet v1: 4 * 81 deltas
    assert _count(head) == 14_310_805
    sigmoid = SiblingBoxHead(80, classification_loss="eql")
    sigmoid.build((None, 512, 7, 7, 256))
    # 12544*1024 + 1024 + 1024*1024 + 1024 + 1024*80 + 80 + 1024*320 + 320
    assert sigmoid.num_outputs == 80 and _count(sigmoid) == 14_305_680


@pytest.mark.parametrize("loss, outputs", [("softmax", 4), ("eqlv2", 4), ("sigmoid", 3), ("eql", 3)])
def test_outputs_per_classifier(loss, outputs):
    head = SiblingBoxHead(3, classification_loss=loss, hidden_units=8)
    out = head(np.ones((2, 5, 2, 2, 3), "float32"))
    assert head.num_outputs == outputs
    assert tuple(out["class_logits"].shape) == (2, 5, outputs)
    assert tuple(out["box_deltas"].shape) == (2, 5, outputs, 4)


@pytest.mark.parametrize("loss", ["sigmoid", "eql", "eqlv2"])
def test_sigmoid_heads_start_at_the_prior(loss):
    head = SiblingBoxHead(4, classification_loss=loss, hidden_units=8)
    out = head(np.zeros((1, 2, 2, 2, 3), "float32"))  # zero input: the logits are the bias
    bias = _np(head.class_score.bias)
    assert bias.shape == (head.num_outputs,)  # eqlv2: the prior on the background column too
    np.testing.assert_allclose(bias, -math.log(999.0), rtol=1e-6)  # -6.906755
    np.testing.assert_allclose(bias, -6.906755, atol=1e-6)
    np.testing.assert_allclose(1 / (1 + np.exp(-_np(out["class_logits"]))), 0.001, rtol=1e-5)


def test_softmax_head_starts_uniform():
    head = SiblingBoxHead(4, hidden_units=8)
    out = head(np.zeros((1, 3, 2, 2, 3), "float32"))
    np.testing.assert_array_equal(_np(head.class_score.bias), 0.0)
    logits = _np(out["class_logits"])
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(probabilities, 1 / 5, atol=1e-7)
    np.testing.assert_array_equal(_np(out["box_deltas"]), 0.0)


def test_initial_weight_statistics():
    head = SiblingBoxHead(40, hidden_units=512, num_hidden=1)  # fan_in 7 * 7 * 16 = 784
    head.build((None, 8, 7, 7, 16))
    kernel = _np(head.hidden[0].kernel)
    assert abs(kernel.std() - 1 / math.sqrt(784)) < 0.02 / math.sqrt(784)  # N(0, 1/fan_in), untruncated
    assert np.abs(kernel).max() > 2.5 / math.sqrt(784)  # not truncated at 2 sigma
    assert abs(_np(head.class_score.kernel).std() - 0.01) < 0.0005
    assert abs(_np(head.box_pred.kernel).std() - 0.001) < 0.00005
    for layer in (head.hidden[0], head.class_score, head.box_pred):
        np.testing.assert_array_equal(_np(layer.bias), 0.0)


def test_forward_matches_numpy_and_pytorch_flatten_order():
    rng = np.random.default_rng(0)
    b, r, h, w, c, hidden = 2, 3, 2, 3, 4, 6
    x = rng.normal(size=(b, r, h, w, c)).astype("float32")
    head = SiblingBoxHead(2, hidden_units=hidden)
    head.build(x.shape)
    # The first layer's weights as PyTorch holds them (flatten order (c, i, j)), ported with the
    # permutation of the module docstring: kernel[(i w + j) C + c] = weight[:, (c h + i) w + j].
    torch_weight = rng.normal(size=(hidden, c * h * w))
    kernel = np.zeros((h * w * c, hidden))
    for i in range(h):
        for j in range(w):
            for ch in range(c):
                kernel[(i * w + j) * c + ch] = torch_weight[:, (ch * h + i) * w + j]
    head.hidden[0].kernel.assign(kernel.astype("float32"))
    for layer in (head.hidden[0], head.hidden[1], head.class_score, head.box_pred):
        layer.bias.assign(rng.normal(size=layer.bias.shape).astype("float32"))
    for layer in (head.hidden[1], head.class_score, head.box_pred):
        layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype("float32"))
    weights = [(_np(layer.kernel), _np(layer.bias)) for layer in head.hidden]
    torch_flat = np.transpose(x, (0, 1, 4, 2, 3)).reshape(b, r, -1).astype(np.float64)  # NCHW flatten
    y = np.maximum(torch_flat @ torch_weight.T + weights[0][1], 0)
    y = np.maximum(y @ weights[1][0] + weights[1][1], 0)
    logits = y @ _np(head.class_score.kernel) + _np(head.class_score.bias)
    deltas = (y @ _np(head.box_pred.kernel) + _np(head.box_pred.bias)).reshape(b, r, 3, 4)
    out = head(x)
    np.testing.assert_allclose(_np(out["class_logits"]), logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_np(out["box_deltas"]), deltas, rtol=1e-4, atol=1e-4)


def test_layer_harness():
    x = np.random.default_rng(1).normal(size=(2, 3, 2, 2, 4)).astype("float32")
    run_layer_test(SiblingBoxHead, dict(num_classes=3, hidden_units=8), x,
                   expected_output_shape={"box_deltas": (2, 3, 4, 4), "class_logits": (2, 3, 4)},
                   expected_num_trainable_weights=8, tolerance=1e-4)
    run_layer_test(SiblingBoxHead, dict(num_classes=3, classification_loss="eql", hidden_units=8, num_hidden=1,
                                        prior_probability=0.01), x,
                   expected_output_shape={"box_deltas": (2, 3, 3, 4), "class_logits": (2, 3, 3)},
                   expected_num_trainable_weights=6, tolerance=1e-4)


def test_arguments_validated():
    for kwargs, name in ((dict(classification_loss="focal"), "classification_loss"),
                         (dict(num_hidden=-1), "num_hidden"), (dict(prior_probability=0.0), "prior_probability"),
                         (dict(hidden_units=0), "hidden_units")):
        with pytest.raises(ValueError, match=name):
            SiblingBoxHead(3, **kwargs)
    with pytest.raises(ValueError, match="roi_features"):
        SiblingBoxHead(3).build((None, 4, 256))
