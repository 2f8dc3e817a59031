import numpy as np
import pytest
from keras import ops

from keras_cvx.layers.rcnn_decoder import RCNNDecoder, class_scores
from tests.detection_reference import numpy_decode
from tests.ops.compiled import run_compiled
from tests.ops.test_nms import _numpy_greedy_nms


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _numpy_scores(logits, loss):
    if loss == "softmax":
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return (e / e.sum(-1, keepdims=True))[..., :-1]
    if loss == "eqlv2":
        return _sigmoid(logits[..., :-1]) * (1 - _sigmoid(logits[..., -1:]))
    return _sigmoid(logits)


@pytest.mark.parametrize("loss", ["softmax", "sigmoid", "eql", "eqlv2"])
def test_class_scores(loss):
    logits = np.random.default_rng(0).normal(size=(2, 5, 4)).astype("float32")
    np.testing.assert_allclose(_np(class_scores(logits, loss)), _numpy_scores(logits, loss), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_detections_against_numpy(loss):
    rng = np.random.default_rng(1)
    rois_per_image, num_classes, image_size = 30, 3, (60, 80)
    outputs = num_classes + (loss == "softmax")
    xy = rng.uniform(0, 60, (2, rois_per_image, 2))
    rois = np.concatenate([xy, xy + rng.uniform(5, 25, xy.shape)], -1).astype("float32")
    logits = rng.normal(0, 2, (2, rois_per_image, outputs)).astype("float32")
    deltas = rng.normal(0, 1, (2, rois_per_image, outputs, 4)).astype("float32")
    valid = np.ones((2, rois_per_image), bool)
    valid[1, -4:] = False
    decoder = RCNNDecoder(loss, score_threshold=0.05, iou_threshold=0.5, max_detections=10)
    out = run_compiled(lambda *a: decoder(*a, image_size=image_size), logits, deltas, rois, valid)
    for b in range(2):
        scores = _numpy_scores(logits[b], loss) * valid[b][:, None]
        boxes = numpy_decode(deltas[b][:, :num_classes], np.repeat(rois[b][:, None], num_classes, 1), (10, 10, 5, 5))
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, image_size[1])
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, image_size[0])
        flat_boxes, flat_scores = boxes.reshape(-1, 4), scores.reshape(-1)
        classes = np.tile(np.arange(num_classes), rois_per_image)
        keep, count = _numpy_greedy_nms(flat_boxes, flat_scores, 10, 0.5, 0.05, classes)
        assert int(_np(out["num_detections"])[b]) == count
        np.testing.assert_allclose(_np(out["boxes"])[b][:count], flat_boxes[keep[:count]], rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(_np(out["scores"])[b][:count], flat_scores[keep[:count]], rtol=1e-5)
        np.testing.assert_array_equal(_np(out["classes"])[b][:count], classes[keep[:count]])
        assert (_np(out["classes"])[b][count:] == -1).all() and not _np(out["scores"])[b][count:].any()


def test_score_threshold_keeps_only_scores_above_it():
    p = np.array([0.0499, 0.0501, 0.5], np.float64)
    logits = np.log(p / (1 - p)).astype("float32").reshape(1, 3, 1)         # sigmoid, one class
    rois = np.array([[[0, 0, 8, 8], [20, 20, 28, 28], [40, 0, 48, 8]]], "float32")
    out = RCNNDecoder("sigmoid", max_detections=3)(logits, np.zeros((1, 3, 1, 4), "float32"), rois,
                                                   np.ones((1, 3), bool), image_size=(64, 64))
    assert int(_np(out["num_detections"])[0]) == 2
    np.testing.assert_allclose(_np(out["scores"])[0], [0.5, 0.0501, 0.0], rtol=1e-5)


def test_config_and_validation():
    decoder = RCNNDecoder("eqlv2", 0.1, 0.6, 50, 1000)
    assert RCNNDecoder.from_config(decoder.get_config()).get_config() == decoder.get_config()
    with pytest.raises(ValueError, match="classification_loss"):
        RCNNDecoder("focal")
    with pytest.raises(ValueError, match="image_size"):
        decoder(np.zeros((1, 1, 3), "float32"), np.zeros((1, 1, 3, 4), "float32"), np.zeros((1, 1, 4), "float32"),
                np.ones((1, 1), bool))
