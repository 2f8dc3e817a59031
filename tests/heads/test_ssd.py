import numpy as np
import pytest
from keras import ops

from keras_cvx.heads.ssd import SSDHead
from keras_cvx.models.backbones.vgg import VGG16SSD
from keras_cvx.ops.anchors import SSD_CONFIGS, ssd_anchors
from tests.layers.test_neighbor_transferring import numpy_conv_same
from tests.test_case import run_layer_test

SSD300_ANCHORS = (4, 6, 6, 6, 4, 4)
SSD512_ANCHORS = (4, 6, 6, 6, 6, 4, 4)


def _features(seed, shapes):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype("float32") for s in shapes]


def numpy_ssd_head(head, features):
    boxes, logits = [], []
    for feature, box_conv, class_conv in zip(features, head.box_convs, head.class_convs):
        boxes.append(numpy_conv_same(feature, *box_conv.get_weights()).reshape(len(feature), -1, 4))
        logits.append(numpy_conv_same(feature, *class_conv.get_weights()).reshape(len(feature), -1, head.num_classes + 1))
    return np.concatenate(boxes, 1), np.concatenate(logits, 1)


def test_harness():
    features = _features(0, [(2, 4, 4, 3), (2, 2, 2, 5), (2, 1, 1, 4)])
    count = 4 * 4 * 2 + 2 * 2 * 3 + 1 * 1 * 2
    run_layer_test(
        SSDHead,
        {"num_classes": 2, "anchors_per_location": (2, 3, 2), "bias_initializer": "random_normal"},
        features,
        expected_output_shape={"box_regression": (2, count, 4), "class_logits": (2, count, 3)},
        expected_num_trainable_weights=12,
    )


def test_matches_numpy():
    features = _features(1, [(2, 5, 5, 3), (2, 3, 3, 4), (2, 1, 1, 2)])
    head = SSDHead(3, anchors_per_location=(2, 3, 1), bias_initializer="random_normal")
    outputs = head(features)
    expected_boxes, expected_logits = numpy_ssd_head(head, [f.astype(np.float64) for f in features])
    np.testing.assert_allclose(ops.convert_to_numpy(outputs["box_regression"]), expected_boxes, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(outputs["class_logits"]), expected_logits, rtol=1e-5, atol=1e-5)


def test_output_order_is_the_anchor_order_of_ssd300():
    """Box channel a·4 + c, with features (y, x) and weights picking them out, predicts
    (row, column, anchor index, level); each row must sit on the anchor with the same index."""
    config = SSD_CONFIGS[300]
    features = []
    for size in config["feature_sizes"]:
        grid = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="ij"), -1)
        features.append(grid[None].astype("float32"))
    head = SSDHead(1, anchors_per_location=SSD300_ANCHORS, kernel_initializer="zeros")
    head.build([f.shape for f in features])
    for level, (anchors, conv) in enumerate(zip(SSD300_ANCHORS, head.box_convs)):
        kernel = np.zeros((3, 3, 2, anchors * 4), "float32")
        kernel[1, 1, 0, 0::4] = 1.0  # row
        kernel[1, 1, 1, 1::4] = 1.0  # column
        bias = np.zeros(anchors * 4, "float32")
        bias[2::4] = np.arange(anchors)
        bias[3::4] = level
        conv.set_weights([kernel, bias])
    predicted = ops.convert_to_numpy(head(features)["box_regression"])[0]
    anchors = ops.convert_to_numpy(ssd_anchors(300))
    assert predicted.shape == anchors.shape == (8732, 4)
    row, column, index, level = (np.rint(predicted[:, k]).astype(int) for k in range(4))
    steps = np.array(config["steps"], "float32")[level]
    np.testing.assert_allclose((anchors[:, 0] + anchors[:, 2]) / 2, (column + 0.5) * steps, atol=1e-3)
    np.testing.assert_allclose((anchors[:, 1] + anchors[:, 3]) / 2, (row + 0.5) * steps, atol=1e-3)
    first = index == 0  # the first anchor of every cell is the (min size, min size) square
    np.testing.assert_allclose(
        (anchors[first, 2] - anchors[first, 0]), np.array(config["min_sizes"], "float32")[level[first]], atol=1e-3
    )
    assert np.array_equal(np.bincount(level), [s * s * a for s, a in zip(config["feature_sizes"], SSD300_ANCHORS)])


@pytest.fixture(scope="module")
def vgg_feature_shapes():
    """Parameter count and pyramid shapes of the full-width VGG16-SSD at 300 and 512 (built once,
    never run; zero init because random init of 23M weights takes seconds under JAX)."""
    shapes = {}
    for size in (300, 512):
        backbone = VGG16SSD(size, kernel_initializer="zeros")
        levels = len(SSD300_ANCHORS if size == 300 else SSD512_ANCHORS)
        features = [tuple(backbone.output[f"p{i}"].shape) for i in range(1, levels + 1)]
        shapes[size] = (backbone.count_params(), features)
    return shapes


@pytest.mark.parametrize(
    "size, anchors, num_classes, expected",
    [
        (300, SSD300_ANCHORS, 20, 26_285_486),
        (300, SSD300_ANCHORS, 80, 34_305_206),
        (512, SSD512_ANCHORS, 20, 27_188_676),
        (512, SSD512_ANCHORS, 80, 36_038_196),
    ],
)
def test_plain_ssd_parameter_counts(vgg_feature_shapes, size, anchors, num_classes, expected):
    """VGG16-SSD + extras + this head has the well-known SSD parameter counts (VOC: 20 object
    classes, COCO: 80; the head adds the background column)."""
    backbone_params, shapes = vgg_feature_shapes[size]
    head = SSDHead(num_classes, anchors_per_location=anchors, kernel_initializer="zeros")
    head.build(shapes)
    assert backbone_params + head.count_params() == expected
    assert head.num_anchors(shapes) == (8732 if size == 300 else 24564)
    output_shapes = head.compute_output_shape(shapes)
    assert output_shapes["class_logits"] == (None, head.num_anchors(shapes), num_classes + 1)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 3, "anchors_per_location": ()}, "anchors_per_location"),
        ({"num_classes": 3, "anchors_per_location": (4, 0)}, "anchors_per_location"),
        ({"num_classes": 3, "kernel_size": 0}, "kernel_size"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        SSDHead(**kwargs)


def test_wrong_number_of_levels_is_rejected():
    with pytest.raises(ValueError, match="features"):
        SSDHead(3, anchors_per_location=(4, 6)).build([(None, 4, 4, 2)])
