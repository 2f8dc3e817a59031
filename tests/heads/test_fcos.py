"""Tests for keras_cvx.heads.fcos.FCOSHead: the 4,920,666 parameters of the COCO head, the
paper's initialisation, the forward pass against NumPy (towers with GroupNorm, per-level
scales, ReLU regression, center-ness on the box tower, level/row/column order), the harness."""

import math

import numpy as np
import pytest
from keras import ops

from keras_cvx.heads.fcos import FCOSHead
from tests.numpy_layers import conv2d, group_norm
from tests.test_case import run_layer_test


@pytest.mark.single_backend  # 4.9M parameters: slow to initialise under JAX; the count is backend-free
def test_coco_parameter_count_and_initialisation():
    head = FCOSHead(80)
    head.build([(None, s, s, 256) for s in (16, 8, 4, 2, 1)])
    assert head.count_params() == 4_920_666
    assert (head.num_convs, head.groups, head.prior_probability, head.num_levels) == (4, 32, 0.01, 5)
    bias = ops.convert_to_numpy(head.class_conv.bias)
    np.testing.assert_allclose(bias, -4.59512, atol=1e-5)  # -log(0.99 / 0.01)
    kernel = ops.convert_to_numpy(head.class_tower[0].kernel)
    assert abs(kernel.std() - 0.01) < 0.0005 and abs(kernel.mean()) < 0.0005
    assert [float(ops.convert_to_numpy(s)) for s in head.scales] == [1.0] * 5


def numpy_head(head, features):
    def weights(layer):
        return [np.asarray(ops.convert_to_numpy(w), np.float64) for w in layer.weights]

    def tower(layers, x):
        for conv, norm in zip(layers[::2], layers[1::2]):
            x = np.maximum(group_norm(conv2d(x, *weights(conv)), head.groups, *weights(norm)), 0)
        return x

    logits, boxes, ctr = [], [], []
    for level, x in enumerate(features):
        t_cls, t_box = tower(head.class_tower, x), tower(head.box_tower, x)
        scale = float(ops.convert_to_numpy(head.scales[level]))
        b = len(x)
        logits.append(conv2d(t_cls, *weights(head.class_conv)).reshape(b, -1, head.num_classes))
        boxes.append(np.maximum(scale * conv2d(t_box, *weights(head.box_conv)), 0).reshape(b, -1, 4))
        ctr.append(conv2d(t_box, *weights(head.centerness_conv)).reshape(b, -1))
    return {"class_logits": np.concatenate(logits, 1), "box_regression": np.concatenate(boxes, 1),
            "centerness_logits": np.concatenate(ctr, 1)}


def test_forward_matches_numpy():
    rng = np.random.default_rng(0)
    head = FCOSHead(3, num_levels=2, num_convs=2, groups=2, return_box_features=True)
    features = [rng.normal(size=(2, 5, 4, 4)).astype("float32"), rng.normal(size=(2, 3, 2, 4)).astype("float32")]
    head.build([f.shape for f in features])
    for w in head.weights:  # random weights and scales, so every path matters
        w.assign(rng.normal(0, 0.5, w.shape).astype("float32"))
    out = head(features)
    expected = numpy_head(head, features)
    for key, value in expected.items():
        np.testing.assert_allclose(ops.convert_to_numpy(out[key]), value, rtol=1e-4, atol=1e-4, err_msg=key)
    assert [tuple(f.shape) for f in out["box_features"]] == [(2, 5, 4, 4), (2, 3, 2, 4)]
    assert out["class_logits"].shape == (2, 26, 3)


def test_layer_harness_and_checks():
    rng = np.random.default_rng(1)
    features = [rng.normal(size=(2, 4, 4, 8)).astype("float32"), rng.normal(size=(2, 2, 2, 8)).astype("float32")]
    run_layer_test(FCOSHead, dict(num_classes=3, num_levels=2, num_convs=1, groups=4), features,
                   expected_output_shape={"class_logits": (2, 20, 3), "box_regression": (2, 20, 4),
                                          "centerness_logits": (2, 20)},
                   expected_num_trainable_weights=2 * 4 + 6 + 2)
    assert math.isclose(FCOSHead(2, prior_probability=0.5).prior_probability, 0.5)
    with pytest.raises(ValueError, match="groups"):
        FCOSHead(3, num_levels=1, groups=3).build([(None, 4, 4, 8)])
    with pytest.raises(ValueError, match="features"):
        FCOSHead(3, num_levels=2).build([(None, 4, 4, 32)])
    with pytest.raises(ValueError, match="prior_probability"):
        FCOSHead(3, prior_probability=0.0)
