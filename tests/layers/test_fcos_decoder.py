"""Tests for keras_cvx.layers.fcos_decoder.FCOSDecoder against a NumPy FCOS/CondInst inference
(AdelaiDet ``forward_for_single_feature_map`` with ``THRESH_WITH_CTR``): s = cls x ctr, top-k
(location, class) pairs per level, threshold on s, boxes from the location distances,
score sqrt(s), class-aware greedy NMS, the best detections; the defaults and the harness."""

import numpy as np
import pytest
from keras import ops

from keras_cvx.layers.fcos_decoder import FCOSDecoder
from tests.ops.test_nms import _numpy_greedy_nms
from tests.test_case import run_layer_test


def numpy_fcos_decode(logits, distances, ctr, locations, level_sizes, threshold, top_k, iou, max_det):
    sigmoid = lambda x: 1 / (1 + np.exp(-np.asarray(x, np.float64)))  # noqa: E731
    out = {k: [] for k in ("boxes", "scores", "classes", "num_detections", "locations")}
    num_classes = logits.shape[-1]
    for b in range(len(logits)):
        s = sigmoid(logits[b]) * sigmoid(ctr[b])[:, None]
        cand_loc, cand_cls, start = [], [], 0
        for size in level_sizes:
            flat = s[start : start + size].reshape(-1)
            order = np.argsort(-flat, kind="stable")[: min(top_k, len(flat))]
            cand_loc += list(start + order // num_classes)
            cand_cls += list(order % num_classes)
            start += size
        cand_loc, cand_cls = np.array(cand_loc), np.array(cand_cls)
        cand_s = s[cand_loc, cand_cls]
        points, d = locations[cand_loc], distances[b, cand_loc]
        boxes = np.concatenate([points - d[:, :2], points + d[:, 2:]], -1)
        scores = np.where(cand_s > threshold, np.sqrt(cand_s), 0.0)
        keep, n = _numpy_greedy_nms(boxes, scores, max_det, iou, 0.0, classes=cand_cls)
        kept = keep[:n]
        pad = max_det - n
        out["boxes"].append(np.concatenate([boxes[kept], np.zeros((pad, 4))]))
        out["scores"].append(np.concatenate([scores[kept], np.zeros(pad)]))
        out["classes"].append(np.concatenate([cand_cls[kept], -np.ones(pad, int)]))
        out["locations"].append(np.concatenate([cand_loc[kept], -np.ones(pad, int)]))
        out["num_detections"].append(n)
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("top_k, threshold", [(1000, 0.05), (4, 0.2)])
def test_matches_numpy(top_k, threshold):
    rng = np.random.default_rng(0)
    level_sizes = (12, 6)
    locations = np.concatenate([np.stack(np.meshgrid(np.arange(4) * 8 + 4, np.arange(3) * 8 + 4), -1).reshape(-1, 2),
                                np.stack(np.meshgrid(np.arange(3) * 16 + 8, np.arange(2) * 16 + 8), -1).reshape(-1, 2)]
                               ).astype("float32")
    logits = rng.normal(-1, 1.5, (2, 18, 3)).astype("float32")
    ctr = rng.normal(0, 1, (2, 18)).astype("float32")
    distances = rng.uniform(2, 20, (2, 18, 4)).astype("float32")
    decoder = FCOSDecoder(score_threshold=threshold, pre_nms_top_k=top_k, iou_threshold=0.6, max_detections=7)
    got = {k: np.asarray(ops.convert_to_numpy(v)) for k, v in
           decoder(logits, distances, ctr, locations, level_sizes=level_sizes).items()}
    expected = numpy_fcos_decode(logits, distances, ctr, locations, level_sizes, threshold, top_k, 0.6, 7)
    np.testing.assert_array_equal(got["num_detections"], expected["num_detections"])
    assert expected["num_detections"].min() > 0
    for key in ("classes", "locations"):
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    for key in ("boxes", "scores"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-5, err_msg=key)


def test_defaults_harness_and_checks():
    decoder = FCOSDecoder()
    assert (decoder.score_threshold, decoder.pre_nms_top_k, decoder.iou_threshold, decoder.max_detections) == (
        0.05, 1000, 0.6, 100)
    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(2, 6, 2)).astype("float32"), rng.uniform(1, 5, (2, 6, 4)).astype("float32"),
              rng.normal(size=(2, 6)).astype("float32"),
              np.tile(np.array([[4, 4], [12, 4], [4, 12], [12, 12], [8, 8], [24, 8]], "float32"), (2, 1, 1))]
    run_layer_test(FCOSDecoder, dict(max_detections=3), inputs[:3], call_kwargs={"locations": inputs[3][0]},
                   expected_output_shape={"boxes": (2, 3, 4), "scores": (2, 3), "classes": (2, 3),
                                          "num_detections": (2,), "locations": (2, 3)},
                   expected_num_trainable_weights=0, run_training_check=False, mixed_precision_output_dtype="float32")
    with pytest.raises(ValueError, match="level_sizes"):
        decoder(*inputs[:3], inputs[3][0], level_sizes=(4, 1))
    with pytest.raises(ValueError, match="iou_threshold"):
        FCOSDecoder(iou_threshold=1.5)
