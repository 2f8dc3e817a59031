"""Tests for keras_cvx.heads.retinanet.RetinaNetHead: the parameter count of the COCO head
computed from the layer shapes, the paper's initialisation (class prior π = 0.01), the forward
pass against NumPy convolutions with the layer's weights at every (level, row, column, anchor,
class), the order shared with FPNAnchorGenerator, the box subnet features, the harness."""

import math

import numpy as np
import pytest
from keras import ops

from keras_cvx.heads.retinanet import RetinaNetHead
from keras_cvx.models.anchor_generators.fpn import FPNAnchorGenerator
from tests.numpy_layers import conv2d
from tests.test_case import run_layer_test


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


def test_coco_parameter_count_and_initialisation():
    head = RetinaNetHead(80)
    head.build([(None, s, s, 256) for s in (16, 8, 4, 2, 1)])
    subnet_conv = 256 * 256 * 9 + 256          # 3x3 conv, 256 -> 256, with bias
    class_predictor = 256 * 9 * 720 + 720      # 3x3 conv, 256 -> K A = 80 x 9
    box_predictor = 256 * 9 * 36 + 36          # 3x3 conv, 256 -> 4 A = 4 x 9
    assert head.count_params() == 4 * subnet_conv * 2 + class_predictor + box_predictor == 6_463_220
    assert (head.num_anchors, head.num_convs, head.prior_probability, head.channels) == (9, 4, 0.01, None)
    np.testing.assert_allclose(_np(head.class_conv.bias), -math.log(0.99 / 0.01), atol=1e-5)  # -4.59512
    for conv in head.class_subnet + head.box_subnet + [head.class_conv, head.box_conv]:
        kernel = _np(conv.kernel)
        assert abs(kernel.std() - 0.01) < 0.0005 and abs(kernel.mean()) < 0.0005, conv.name
    for conv in head.class_subnet + head.box_subnet + [head.box_conv]:
        assert not _np(conv.bias).any(), conv.name


def test_initial_class_probabilities_are_the_prior():
    rng = np.random.default_rng(3)
    head = RetinaNetHead(5, num_anchors=3)
    features = [rng.normal(size=(2, 6, 6, 16)).astype("float32"), rng.normal(size=(2, 3, 3, 16)).astype("float32")]
    probabilities = 1 / (1 + np.exp(-_np(head(features)["class_logits"])))
    assert probabilities.shape == (2, (36 + 9) * 3, 5)
    np.testing.assert_allclose(probabilities, 0.01, atol=5e-4)


def _numpy_subnet(convs, x):
    for conv in convs:
        x = np.maximum(conv2d(x, _np(conv.kernel), _np(conv.bias)), 0.0)
    return x


def test_forward_and_order_match_numpy():
    rng = np.random.default_rng(0)
    num_classes, num_anchors = 3, 2
    head = RetinaNetHead(num_classes, num_anchors=num_anchors, num_convs=2, channels=6, return_box_features=True)
    sizes = [(5, 4), (3, 2)]
    features = [rng.normal(size=(2, h, w, 4)).astype("float32") for h, w in sizes]
    head.build([f.shape for f in features])
    for w in head.weights:  # random weights and biases, so every path matters
        w.assign(rng.normal(0, 0.5, w.shape).astype("float32"))
    out = head(features)
    logits, deltas = _np(out["class_logits"]), _np(out["box_regression"])
    assert logits.shape == (2, (20 + 6) * num_anchors, num_classes) and deltas.shape == (2, 52, 4)
    offset = 0
    for level, x in enumerate(features):
        t_cls = _numpy_subnet(head.class_subnet, x)
        t_box = _numpy_subnet(head.box_subnet, x)
        dense_logits = conv2d(t_cls, _np(head.class_conv.kernel), _np(head.class_conv.bias))  # [B, H, W, A K]
        dense_deltas = conv2d(t_box, _np(head.box_conv.kernel), _np(head.box_conv.bias))     # [B, H, W, 4 A]
        np.testing.assert_allclose(_np(out["box_features"][level]), t_box, rtol=1e-4, atol=1e-4)
        height, width = sizes[level]
        for row in range(height):
            for col in range(width):
                for a in range(num_anchors):
                    n = offset + (row * width + col) * num_anchors + a
                    classes = slice(a * num_classes, (a + 1) * num_classes)   # channel a K + k
                    np.testing.assert_allclose(logits[:, n], dense_logits[:, row, col, classes],
                                               rtol=1e-4, atol=1e-4, err_msg=f"level {level} ({row}, {col}) anchor {a}")
                    np.testing.assert_allclose(deltas[:, n], dense_deltas[:, row, col, 4 * a:4 * a + 4],
                                               rtol=1e-4, atol=1e-4, err_msg=f"level {level} ({row}, {col}) anchor {a}")
        offset += height * width * num_anchors
    assert [tuple(f.shape) for f in out["box_features"]] == [(2, 5, 4, 6), (2, 3, 2, 6)]


def test_rows_follow_the_anchor_generator():
    """Row n of the head's outputs is anchor n of FPNAnchorGenerator: its centre is the
    location's (column · stride, row · stride) and its shape the a-th (ratio, scale) pair."""
    ratios, scales, strides, sizes = (0.5, 1.0, 2.0), (2 ** 0, 2 ** (1 / 3), 2 ** (2 / 3)), (8, 16), (32, 64)
    generator = FPNAnchorGenerator(strides=strides, sizes=sizes, aspect_ratios=ratios, scales=scales)
    anchors = generator((48, 32))                                     # levels 6 x 4 and 3 x 2
    head = RetinaNetHead(2, num_anchors=generator.anchors_per_location, num_convs=0)
    out = head([np.zeros((1, 6, 4, 8), "float32"), np.zeros((1, 3, 2, 8), "float32")])
    assert out["class_logits"].shape[1] == len(anchors) == (24 + 6) * 9
    n = 0
    for stride, size, (height, width) in zip(strides, sizes, [(6, 4), (3, 2)]):
        for row in range(height):
            for col in range(width):
                for a in range(9):
                    ratio, scale = ratios[a // 3], scales[a % 3]
                    box = anchors[n]
                    np.testing.assert_allclose((box[:2] + box[2:]) / 2, (col * stride, row * stride), atol=1e-4)
                    np.testing.assert_allclose(box[2:] - box[:2], (size * scale / math.sqrt(ratio),
                                                                   size * scale * math.sqrt(ratio)), rtol=1e-5)
                    n += 1


def test_output_shapes():
    head = RetinaNetHead(4, num_anchors=3, num_convs=1, channels=8, return_box_features=True)
    shapes = [(2, 8, 6, 16), (2, 4, 3, 16)]
    expected = {"class_logits": (2, 60 * 3, 4), "box_regression": (2, 180, 4),
                "box_features": [(2, 8, 6, 8), (2, 4, 3, 8)]}
    assert head.compute_output_shape(shapes) == expected
    out = head([np.zeros(s, "float32") for s in shapes])
    assert {k: (tuple(v.shape) if k != "box_features" else [tuple(t.shape) for t in v])
            for k, v in out.items()} == expected
    assert "box_features" not in RetinaNetHead(4).compute_output_shape(shapes)


def test_layer_harness_and_checks():
    rng = np.random.default_rng(1)
    features = [rng.normal(size=(2, 4, 4, 8)).astype("float32"), rng.normal(size=(2, 2, 2, 8)).astype("float32")]
    run_layer_test(RetinaNetHead, dict(num_classes=3, num_anchors=2, num_convs=1, channels=4,
                                       return_box_features=True), features,
                   expected_output_shape={"class_logits": (2, 40, 3), "box_regression": (2, 40, 4),
                                          "box_features": [(2, 4, 4, 4), (2, 2, 2, 4)]},
                   expected_num_trainable_weights=2 * 2 + 4)
    for kwargs, name in (({"num_classes": 0}, "num_classes"), ({"num_classes": 2, "num_anchors": 0}, "num_anchors"),
                         ({"num_classes": 2, "num_convs": -1}, "num_convs"),
                         ({"num_classes": 2, "channels": 0}, "channels"),
                         ({"num_classes": 2, "prior_probability": 0.0}, "prior_probability")):
        with pytest.raises(ValueError, match=name):
            RetinaNetHead(**kwargs)
    with pytest.raises(ValueError, match="same channels"):
        RetinaNetHead(2).build([(None, 4, 4, 8), (None, 2, 2, 16)])
    with pytest.raises(ValueError, match="features"):
        RetinaNetHead(2).build([])
    with pytest.raises(ValueError, match="features"):
        RetinaNetHead(2).build([(None, None, 4, 8)])
