"""Tests for keras_cvx.layers.retinanet_decoder.RetinaNetDecoder against a NumPy RetinaNet
inference written here after the paper (arXiv 1708.02002 Sec. 4.1) and Detectron2's
``inference_single_image`` (per level: threshold first, then the top-k of the remaining
(anchor, class) scores; boxes decoded from their anchors; class-aware greedy NMS; the best
detections): eager and compiled, a score exactly at the threshold, the anchor indices, the
defaults and the harness."""

import functools

import numpy as np
import pytest
from keras import ops

from keras_cvx.layers.retinanet_decoder import RetinaNetDecoder
from keras_cvx.models.anchor_generators.fpn import FPNAnchorGenerator
from tests.detection_reference import numpy_decode
from tests.ops.compiled import run_compiled
from tests.ops.test_nms import _numpy_greedy_nms
from tests.test_case import run_layer_test


def _np(out):
    return {k: np.asarray(ops.convert_to_numpy(v)) for k, v in out.items()}


def numpy_retinanet_decode(logits, deltas, anchors, level_sizes, threshold, top_k, iou, max_det,
                           weights=(1.0, 1.0, 1.0, 1.0)):
    out = {k: [] for k in ("boxes", "scores", "classes", "num_detections", "anchors")}
    num_classes = logits.shape[-1]
    stats = {"candidates_per_level": [], "candidates": 0}
    for b in range(len(logits)):
        s = 1 / (1 + np.exp(-np.asarray(logits[b], np.float64)))
        cand_anchor, cand_class, start = [], [], 0
        for size in level_sizes:
            flat = s[start : start + size].reshape(-1)
            above = np.flatnonzero(flat > threshold)                        # 1. threshold
            above = above[np.argsort(-flat[above], kind="stable")][:top_k]   # 2. top-k of those
            stats["candidates_per_level"].append(int((flat > threshold).sum()))
            cand_anchor += list(start + above // num_classes)
            cand_class += list(above % num_classes)
            start += size
        cand_anchor, cand_class = np.array(cand_anchor, int), np.array(cand_class, int)
        scores = s[cand_anchor, cand_class]
        boxes = numpy_decode(deltas[b, cand_anchor], anchors[cand_anchor], weights)
        keep, n = _numpy_greedy_nms(boxes, scores, max_det, iou, -np.inf, classes=cand_class)
        stats["candidates"] += len(cand_anchor)
        kept, pad = keep[:n], max_det - n
        out["boxes"].append(np.concatenate([boxes[kept].reshape(-1, 4), np.zeros((pad, 4))]))
        out["scores"].append(np.concatenate([scores[kept], np.zeros(pad)]))
        out["classes"].append(np.concatenate([cand_class[kept], -np.ones(pad, int)]))
        out["anchors"].append(np.concatenate([cand_anchor[kept], -np.ones(pad, int)]))
        out["num_detections"].append(n)
    return {k: np.array(v) for k, v in out.items()}, stats


def _case(seed, batch=2, num_classes=4):
    """Two levels of RetinaNet-style anchors (3 ratios): 4 x 3 and 2 x 2 locations, 48 anchors."""
    generator = FPNAnchorGenerator(strides=(8, 16), sizes=(16, 32), aspect_ratios=(0.5, 1.0, 2.0))
    anchors = generator((32, 24))
    level_sizes = (4 * 3 * 3, 2 * 2 * 3)
    rng = np.random.default_rng(seed)
    logits = rng.normal(-1.0, 1.5, (batch, len(anchors), num_classes)).astype("float32")
    deltas = rng.normal(0, 0.3, (batch, len(anchors), 4)).astype("float32")
    return logits, deltas, anchors, level_sizes


def _assert_equal_detections(got, expected):
    np.testing.assert_array_equal(got["num_detections"], expected["num_detections"])
    for key in ("classes", "anchors"):
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    for key in ("boxes", "scores"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("top_k, threshold, iou, max_det, weights", [
    (1000, 0.05, 0.5, 12, (1.0, 1.0, 1.0, 1.0)),
    (5, 0.2, 0.3, 7, (10.0, 10.0, 5.0, 5.0)),
])
def test_matches_numpy_eager_and_compiled(top_k, threshold, iou, max_det, weights):
    logits, deltas, anchors, level_sizes = _case(0)
    decoder = RetinaNetDecoder(score_threshold=threshold, pre_nms_top_k=top_k, iou_threshold=iou,
                               max_detections=max_det, box_weights=weights)
    expected, stats = numpy_retinanet_decode(logits, deltas, anchors, level_sizes, threshold, top_k, iou, max_det,
                                             weights)
    assert 0 < expected["num_detections"].min() and (expected["num_detections"] < stats["candidates"] / 2).all()
    if top_k < 1000:
        assert min(stats["candidates_per_level"]) > top_k  # the top-k decides which candidates enter
    eager = _np(decoder(logits, deltas, anchors, level_sizes=level_sizes))
    compiled = run_compiled(functools.partial(decoder, anchors=anchors, level_sizes=level_sizes), logits, deltas)
    for got in (eager, compiled):
        _assert_equal_detections(got, expected)
    assert eager["classes"].dtype == eager["anchors"].dtype == eager["num_detections"].dtype == np.int32


def test_one_level_by_default():
    logits, deltas, anchors, _ = _case(1, batch=1)
    got = _np(RetinaNetDecoder(pre_nms_top_k=10, max_detections=6)(logits, deltas, anchors))
    expected, _ = numpy_retinanet_decode(logits, deltas, anchors, (len(anchors),), 0.05, 10, 0.5, 6)
    _assert_equal_detections(got, expected)


def test_score_exactly_at_the_threshold_is_dropped():
    anchors = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], "float32")
    logits = np.full((1, 3, 2), -20.0, "float32")
    logits[0, 0, 1] = 0.0       # sigmoid(0) = 0.5 exactly: not above the threshold
    logits[0, 2, 0] = 0.001     # 0.50025: kept
    out = _np(RetinaNetDecoder(score_threshold=0.5, max_detections=3)(logits, np.zeros((1, 3, 4), "float32"), anchors))
    assert out["num_detections"].tolist() == [1]
    assert out["anchors"][0].tolist() == [2, -1, -1] and out["classes"][0].tolist() == [0, -1, -1]
    np.testing.assert_allclose(out["scores"][0], [1 / (1 + np.exp(-0.001)), 0, 0], rtol=1e-6)


def test_anchor_indices_point_at_the_detections_anchors():
    """Several classes of one anchor give several detections; indices are global (level 2's
    anchor is index 2); boxes are the deltas decoded against exactly that anchor."""
    anchors = np.array([[0, 0, 10, 10], [30, 0, 40, 10], [60, 0, 80, 20]], "float32")
    logits = np.full((1, 3, 2), -20.0, "float32")
    logits[0, 2, 1], logits[0, 0, 0], logits[0, 0, 1] = 5.0, 3.0, 2.0
    deltas = np.random.default_rng(2).normal(0, 0.2, (1, 3, 4)).astype("float32")
    out = _np(RetinaNetDecoder(max_detections=4)(logits, deltas, anchors, level_sizes=(2, 1)))
    assert out["anchors"][0].tolist() == [2, 0, 0, -1] and out["classes"][0].tolist() == [1, 0, 1, -1]
    np.testing.assert_allclose(out["boxes"][0, :3], numpy_decode(deltas[0, [2, 0, 0]], anchors[[2, 0, 0]]),
                               rtol=1e-5, atol=1e-5)
    assert not out["boxes"][0, 3].any() and out["num_detections"].tolist() == [3]


def test_defaults_harness_and_checks():
    decoder = RetinaNetDecoder()
    assert (decoder.score_threshold, decoder.pre_nms_top_k, decoder.iou_threshold, decoder.max_detections,
            decoder.box_weights) == (0.05, 1000, 0.5, 100, (1.0, 1.0, 1.0, 1.0))
    rng = np.random.default_rng(3)
    anchors = np.array([[0, 0, 8, 8], [8, 0, 16, 8], [0, 8, 8, 16], [8, 8, 16, 16], [0, 0, 16, 16], [16, 0, 32, 16]],
                       "float32")
    inputs = [rng.normal(size=(2, 6, 2)).astype("float32"), rng.normal(0, 0.2, (2, 6, 4)).astype("float32")]
    run_layer_test(RetinaNetDecoder, dict(max_detections=3, box_weights=(10, 10, 5, 5)), inputs,
                   call_kwargs={"anchors": anchors, "level_sizes": (4, 2)},
                   expected_output_shape={"anchors": (2, 3), "boxes": (2, 3, 4), "classes": (2, 3),
                                          "num_detections": (2,), "scores": (2, 3)},
                   expected_num_trainable_weights=0, run_training_check=False, mixed_precision_output_dtype="float32")
    assert decoder.compute_output_shape((None, 6, 2)) == {
        "boxes": (None, 100, 4), "scores": (None, 100), "classes": (None, 100), "num_detections": (None,),
        "anchors": (None, 100)}
    with pytest.raises(ValueError, match="level_sizes"):
        decoder(*inputs, anchors, level_sizes=(4, 1))
    with pytest.raises(ValueError, match="anchors"):
        decoder(*inputs, anchors[:5])
    with pytest.raises(ValueError, match="box_regression"):
        decoder(inputs[0], inputs[1][:, :5], anchors)
    for kwargs, name in (({"iou_threshold": 1.5}, "iou_threshold"), ({"pre_nms_top_k": 0}, "pre_nms_top_k"),
                         ({"score_threshold": 1.0}, "score_threshold"), ({"max_detections": 0}, "max_detections"),
                         ({"box_weights": (1, 1, 1)}, "box_weights"), ({"box_weights": (1, 1, -1, 1)}, "box_weights")):
        with pytest.raises(ValueError, match=name):
            RetinaNetDecoder(**kwargs)
