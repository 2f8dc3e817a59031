import numpy as np
import pytest
from keras import ops

from keras_cvx.layers.ssd_decoder import SSDDecoder
from tests.test_case import run_layer_test

def numpy_decode(deltas, anchors, weights=(10.0, 10.0, 5.0, 5.0), clip=np.log(1000.0 / 16.0)):
    wa, ha = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    xa, ya = anchors[:, 0] + wa / 2, anchors[:, 1] + ha / 2
    dx, dy = deltas[..., 0] / weights[0], deltas[..., 1] / weights[1]
    dw, dh = np.minimum(deltas[..., 2] / weights[2], clip), np.minimum(deltas[..., 3] / weights[3], clip)
    x, y, w, h = xa + dx * wa, ya + dy * ha, wa * np.exp(dw), ha * np.exp(dh)
    return np.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], -1)


def numpy_iou(box, boxes):
    w = np.maximum(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0)
    h = np.maximum(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0)
    inter = w * h
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0)


def numpy_detections(deltas, logits, anchors, score_threshold, iou_threshold, top_k, max_detections):
    """Caffe SSD's DetectionOutput in NumPy: per class top-k above the threshold, greedy NMS,
    then the best ``max_detections`` over all classes."""
    out = []
    for b in range(len(deltas)):
        boxes = numpy_decode(deltas[b], anchors)
        z = logits[b] - logits[b].max(-1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        kept = []
        for k in range(1, logits.shape[-1]):
            order = np.argsort(-probs[:, k], kind="stable")[:top_k]
            order = [i for i in order if probs[i, k] > score_threshold]
            chosen = []
            for i in order:
                if all(numpy_iou(boxes[j], boxes[i][None])[0] <= iou_threshold for j in chosen):
                    chosen.append(i)
            kept += [(probs[i, k], k - 1, boxes[i]) for i in chosen]
        kept.sort(key=lambda t: -t[0])
        out.append(kept[:max_detections])
    return out


def _inputs(seed, batch=2, cells=6, classes=4):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(8, 56, (cells * cells, 2))
    sizes = rng.uniform(6, 30, (cells * cells, 2))
    anchors = np.concatenate([centres - sizes / 2, centres + sizes / 2], -1).astype("float32")
    deltas = rng.normal(0, 1.5, (batch, len(anchors), 4)).astype("float32")
    logits = rng.normal(0, 2.0, (batch, len(anchors), classes)).astype("float32")
    return deltas, logits, anchors


def test_harness():
    deltas, logits, anchors = _inputs(0)
    run_layer_test(
        SSDDecoder,
        {"score_threshold": 0.05, "iou_threshold": 0.5, "pre_nms_top_k": 10, "max_detections": 7},
        [deltas, logits],
        call_kwargs={"anchors": anchors},
        expected_output_shape={"boxes": (2, 7, 4), "classes": (2, 7), "num_detections": (2,), "scores": (2, 7)},
        expected_num_trainable_weights=0,
        mixed_precision_output_dtype="float32",
        run_training_check=False,
    )


@pytest.mark.parametrize("score_threshold, iou_threshold, top_k, max_detections",
                         [(0.01, 0.45, 400, 100), (0.2, 0.3, 5, 6), (0.05, 0.6, 12, 20)])
def test_matches_numpy_detection_output(score_threshold, iou_threshold, top_k, max_detections):
    deltas, logits, anchors = _inputs(1)
    decoder = SSDDecoder(score_threshold, iou_threshold, top_k, max_detections)
    out = {k: ops.convert_to_numpy(v) for k, v in decoder(deltas, logits, anchors).items()}
    expected = numpy_detections(deltas.astype(np.float64), logits.astype(np.float64), anchors.astype(np.float64),
                                score_threshold, iou_threshold, top_k, max_detections)
    for b, rows in enumerate(expected):
        n = len(rows)
        assert out["num_detections"][b] == n
        np.testing.assert_allclose(out["scores"][b, :n], [r[0] for r in rows], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(out["classes"][b, :n], [r[1] for r in rows])
        np.testing.assert_allclose(out["boxes"][b, :n], np.array([r[2] for r in rows]).reshape(-1, 4), atol=2e-4)
        # padding rows: zero boxes and scores, class -1
        assert np.all(out["classes"][b, n:] == -1) and np.all(out["scores"][b, n:] == 0)
        assert np.all(out["boxes"][b, n:] == 0)


def test_background_only_gives_no_detection():
    deltas, logits, anchors = _inputs(2)
    logits[..., 0] = 50.0  # background everywhere: every object score ~e^-50 < 0.01
    out = SSDDecoder()(deltas, logits, anchors)
    assert ops.convert_to_numpy(out["num_detections"]).tolist() == [0, 0]
    assert np.all(ops.convert_to_numpy(out["classes"]) == -1)


def test_argument_checks():
    for kwargs, name in [({"score_threshold": 1.5}, "score_threshold"), ({"iou_threshold": -0.1}, "iou_threshold"),
                         ({"pre_nms_top_k": 0}, "pre_nms_top_k"), ({"max_detections": 2.5}, "max_detections"),
                         ({"box_weights": (1, 1, 1)}, "box_weights")]:
        with pytest.raises(ValueError, match=name):
            SSDDecoder(**kwargs)
