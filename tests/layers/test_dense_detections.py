"""Tests for keras_cvx.layers.dense_detections: the per-level top-k, threshold, class-aware
NMS and gather shared by the FCOS and RetinaNet decoders, against a NumPy loop (threshold,
then the top-k of each level, then textbook greedy NMS), with an output-score transform,
an empty level, a score exactly at the threshold, and bad level sizes."""

import numpy as np
import pytest
from keras import ops

from keras_cvx.layers.dense_detections import dense_detections
from tests.ops.compiled import run_compiled
from tests.ops.test_nms import _numpy_greedy_nms


def numpy_dense_detections(scores, boxes, level_sizes, top_k, threshold, iou, max_det, score_fn=lambda s: s):
    out = {k: [] for k in ("scores", "classes", "locations", "num_detections")}
    num_classes = scores.shape[-1]
    for b in range(len(scores)):
        s = np.asarray(scores[b], np.float64)
        locations, classes, start = [], [], 0
        for size in level_sizes:
            flat = s[start : start + size].reshape(-1)
            above = np.flatnonzero(flat > threshold)
            above = above[np.argsort(-flat[above], kind="stable")][:top_k]
            locations += list(start + above // num_classes)
            classes += list(above % num_classes)
            start += size
        locations, classes = np.array(locations, int), np.array(classes, int)
        kept_scores = score_fn(s[locations, classes])
        keep, n = _numpy_greedy_nms(boxes[b, locations], kept_scores, max_det, iou, -np.inf, classes=classes)
        pad = max_det - n
        out["scores"].append(np.concatenate([kept_scores[keep[:n]], np.zeros(pad)]))
        out["classes"].append(np.concatenate([classes[keep[:n]], -np.ones(pad, int)]))
        out["locations"].append(np.concatenate([locations[keep[:n]], -np.ones(pad, int)]))
        out["num_detections"].append(n)
    return {k: np.array(v) for k, v in out.items()}


def _case(seed, batch=2, num_locations=30, num_classes=3):
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0, 1, (batch, num_locations, num_classes)).astype("float32")
    corners = rng.uniform(0, 40, (batch, num_locations, 2))
    sizes = rng.uniform(4, 20, (batch, num_locations, 2))
    boxes = np.concatenate([corners, corners + sizes], -1).astype("float32")
    return scores, boxes


@pytest.mark.parametrize("level_sizes, top_k, threshold, score_fn", [
    ((20, 0, 10), 7, 0.3, None),        # an empty level; top-k below the level's candidates
    ((30,), 100, 0.05, "sqrt"),          # one level, every candidate, FCOS's sqrt score
])
def test_matches_numpy_eager_and_compiled(level_sizes, top_k, threshold, score_fn):
    scores, boxes = _case(0)

    def detect(scores, boxes):
        return dense_detections(scores, lambda index: ops.take_along_axis(
            boxes, ops.repeat(index[..., None], 4, axis=-1), axis=1), level_sizes, top_k, threshold, 0.4, 12,
            score_fn=None if score_fn is None else ops.sqrt)

    expected = numpy_dense_detections(scores, boxes, level_sizes, top_k, threshold, 0.4, 12,
                                      (lambda s: s) if score_fn is None else np.sqrt)
    for got in (detect(scores, boxes), run_compiled(detect, scores, boxes)):
        got = {k: np.asarray(ops.convert_to_numpy(v)) for k, v in got.items()}
        np.testing.assert_array_equal(got["num_detections"], expected["num_detections"])
        np.testing.assert_array_equal(got["classes"], expected["classes"])
        np.testing.assert_array_equal(got["locations"], expected["locations"])
        np.testing.assert_allclose(got["scores"], expected["scores"], rtol=1e-6)
        index = np.maximum(got["locations"], 0)
        valid = got["locations"] >= 0
        np.testing.assert_array_equal(got["boxes"], np.where(valid[..., None], np.take_along_axis(
            boxes, index[..., None].repeat(4, -1), 1), 0.0))


def test_score_exactly_at_the_threshold_is_dropped_and_bad_level_sizes_are_refused():
    scores = np.array([[[0.25, 0.5], [0.75, 0.125]]], "float32")  # exact in float32
    boxes = np.array([[[0, 0, 10, 10], [20, 20, 30, 30]]], "float32")
    out = dense_detections(scores, lambda index: ops.take(boxes[0], index, axis=0), score_threshold=0.25,
                           max_detections=4)
    assert np.asarray(ops.convert_to_numpy(out["scores"]))[0].tolist() == [0.75, 0.5, 0.0, 0.0]
    assert int(ops.convert_to_numpy(out["num_detections"])[0]) == 2
    for level_sizes in [(1,), (3, -1)]:
        with pytest.raises(ValueError, match="level_sizes"):
            dense_detections(scores, lambda index: index, level_sizes)
