"""Tests for keras_cvx.models.label_encoders.retinanet.RetinaNetLabelEncoder against a NumPy
RetinaNet labelling written here from the paper (arXiv 1708.02002 Sec. 4 "Anchors": IoU >= 0.5
positive, < 0.4 background, in between ignored) and Detectron2's ``Matcher`` loop (low-quality
matches: each ground truth's best anchors, ties included, keep their own argmax ground truth):
the thresholds hit exactly, low-quality matches, box targets, padding, compiled runs."""

import functools

import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.models.anchor_generators.fpn import FPNAnchorGenerator
from keras_cvx.models.label_encoders.retinanet import RetinaNetLabelEncoder
from tests.detection_reference import numpy_encode, numpy_iou
from tests.ops.compiled import run_compiled


def _np(out):
    return {k: np.asarray(ops.convert_to_numpy(v)) for k, v in out.items()}


def numpy_retinanet_targets(gt_boxes, gt_labels, anchors, positive=0.5, negative=0.4, low_quality=True,
                            weights=(1.0, 1.0, 1.0, 1.0)):
    """One image: labels (class / -1 background / -2 ignored), matched index, box targets."""
    n = len(anchors)
    labels, matched, targets = np.full(n, -1), np.full(n, -1), np.zeros((n, 4))
    real = np.flatnonzero(gt_labels >= 0)
    if not len(real):
        return labels, matched, targets
    iou = numpy_iou(gt_boxes[real], anchors)                  # [G, N]
    best, best_gt = iou.max(0), iou.argmax(0)
    state = np.where(best >= positive, 1, np.where(best < negative, 0, -1))
    if low_quality:
        for g in range(len(real)):
            top = iou[g].max()
            if top > 0:                                     # a box overlapping nothing claims nothing
                state[iou[g] == top] = 1
    for a in range(n):
        if state[a] == 1:
            matched[a] = real[best_gt[a]]
            labels[a] = gt_labels[matched[a]]
            targets[a] = numpy_encode(gt_boxes[matched[a]], anchors[a], weights)
        elif state[a] == -1:
            labels[a] = -2
    return labels, matched, targets


def test_exactly_at_the_thresholds():
    """IoU 0.5 is positive, IoU 0.4 ignored (background needs < 0.4), 0.399 background.
    Integer areas (10^6 and 5·10^5, 4·10^5, 3.99·10^5) are exact in float32, so the IoUs are
    the correctly rounded quotients: 0.5 exactly, and for 0.4 the same float32 as the
    threshold 0.4 itself."""
    gt = np.array([[[0, 0, 1000, 1000]]], "float32")
    anchors = np.array([[0, 0, 1000, 1000],     # IoU 1
                        [0, 0, 1000, 500],      # 0.5   -> positive
                        [0, 0, 1000, 499],      # 0.499 -> ignored
                        [0, 0, 1000, 400],      # 0.4   -> ignored
                        [0, 0, 1000, 399],      # 0.399 -> background
                        [2000, 0, 3000, 1000]], "float32")
    for low_quality in (True, False):
        out = _np(RetinaNetLabelEncoder(allow_low_quality_matches=low_quality)(gt, np.array([[3]]), anchors))
        assert out["labels"][0].tolist() == [3, 3, -2, -2, -1, -1]
        assert out["matched_gt"][0].tolist() == [0, 0, -1, -1, -1, -1]
        np.testing.assert_allclose(out["box_targets"][0, 1], [0, 0.5, 0, np.log(2.0)], atol=1e-6)
        assert not out["box_targets"][0, [0, 2, 3, 4, 5]].any()


def _low_quality_case():
    gt = np.array([[0, 0, 100, 100],       # 0: label 1, anchor 0 exactly
                   [200, 200, 300, 300],   # 1: label 2, best IoU 0.3 at anchors 1 and 2 (a tie)
                   [0, 0, 100, 100],       # 2: padding (label -1) on anchor 0 / 3 exactly
                   [800, 800, 900, 900],   # 3: label 4, overlaps no anchor
                   [400, 0, 435, 100],     # 4: label 5, best IoU 0.35 at anchor 5
                   [462, 0, 500, 100]],    # 5: label 6, IoU 0.38 with anchor 5, 1 with anchor 6
                  "float32")
    labels = np.array([1, 2, -1, 4, 5, 6])
    anchors = np.array([[0, 0, 100, 100],
                        [200, 200, 300, 230],    # IoU 0.3 with gt 1
                        [200, 270, 300, 300],    # IoU 0.3 with gt 1
                        [600, 600, 700, 700],    # overlaps nothing
                        [200, 200, 300, 220],    # IoU 0.2 with gt 1: not its best
                        [400, 0, 500, 100],      # 0.35 with gt 4 (its best), 0.38 with gt 5
                        [462, 0, 500, 100]], "float32")
    return gt, labels, anchors


def test_low_quality_matches():
    gt, labels, anchors = _low_quality_case()
    encoder = RetinaNetLabelEncoder()
    out = _np(encoder(gt[None], labels[None], anchors))
    # anchors 1 and 2: gt 1's best (tie, IoU 0.3 < 0.4); anchor 5: gt 4's best, matched to its own
    # argmax gt 5 (Detectron2); gt 3 overlaps nothing and claims nothing.
    assert out["labels"][0].tolist() == [1, 2, 2, -1, -1, 6, 6]
    assert out["matched_gt"][0].tolist() == [0, 1, 1, -1, -1, 5, 5]
    expected = numpy_retinanet_targets(gt, labels, anchors)
    assert out["labels"][0].tolist() == expected[0].tolist()
    np.testing.assert_allclose(out["box_targets"][0], expected[2], rtol=1e-5, atol=1e-5)
    off = _np(RetinaNetLabelEncoder(allow_low_quality_matches=False)(gt[None], labels[None], anchors))
    assert off["labels"][0].tolist() == [1, -1, -1, -1, -1, -1, 6]   # 0.3 and 0.38 are background


def test_padding_is_never_matched():
    gt, labels, anchors = _low_quality_case()
    anchors[3] = gt[2] + [0, 0, 0, 1]          # IoU 0.99 with padding rows 0 and 2 only
    labels = labels.copy()
    labels[0] = -1                             # anchor 0 now overlaps padding rows only
    out = _np(RetinaNetLabelEncoder()(gt[None], labels[None], anchors))
    assert out["labels"][0, [0, 3]].tolist() == [-1, -1] and out["matched_gt"][0, [0, 3]].tolist() == [-1, -1]
    assert not np.isin(out["matched_gt"], [0, 2]).any()
    empty = _np(RetinaNetLabelEncoder()(np.zeros((2, 3, 4), "float32"), np.full((2, 3), -1), anchors))
    assert (empty["labels"] == -1).all() and (empty["matched_gt"] == -1).all() and not empty["box_targets"].any()


def _random_batch(seed, anchors, batch=2, m=6):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 90, (batch, m, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(6, 70, (batch, m, 2))], -1).astype("float32")
    labels = rng.integers(0, 5, (batch, m))
    labels[0, 4:] = -1                          # padded rows
    labels[1, 5:] = -1
    return boxes, labels


@pytest.mark.parametrize("seed, weights", [(0, (1.0, 1.0, 1.0, 1.0)), (1, (10.0, 10.0, 5.0, 5.0))])
def test_random_batches_against_numpy_eager_and_compiled(seed, weights):
    generator = FPNAnchorGenerator(strides=(8, 16, 32), sizes=(32, 64, 128),
                                   scales=(2 ** 0, 2 ** (1 / 3), 2 ** (2 / 3)))
    anchors = generator((96, 96))                                     # (144 + 36 + 9) x 9 anchors
    gt, labels = _random_batch(seed, anchors)
    encoder = RetinaNetLabelEncoder(box_weights=weights)
    eager = _np(encoder(gt, labels, anchors))
    compiled = run_compiled(functools.partial(encoder, anchors=anchors), gt, labels)
    for b in range(len(gt)):
        exp_labels, exp_matched, exp_targets = numpy_retinanet_targets(gt[b], labels[b], anchors, weights=weights)
        assert {-2, -1}.issubset(exp_labels) and (exp_labels >= 0).sum() > 5
        for out in (eager, compiled):
            np.testing.assert_array_equal(out["labels"][b], exp_labels)
            np.testing.assert_array_equal(out["matched_gt"][b], exp_matched)
            np.testing.assert_allclose(out["box_targets"][b], exp_targets, rtol=1e-4, atol=1e-4)
    assert eager["labels"].dtype == eager["matched_gt"].dtype == np.int32 and eager["box_targets"].dtype == np.float32


def test_config_and_validation():
    encoder = RetinaNetLabelEncoder(positive_threshold=0.6, negative_threshold=0.3, allow_low_quality_matches=False,
                                    box_weights=(10, 10, 5, 5))
    config = encoder.get_config()
    assert config == {"positive_threshold": 0.6, "negative_threshold": 0.3, "allow_low_quality_matches": False,
                      "box_weights": [10.0, 10.0, 5.0, 5.0]}
    assert RetinaNetLabelEncoder.from_config(config).get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(encoder))
    assert type(revived) is RetinaNetLabelEncoder and revived.get_config() == config
    defaults = RetinaNetLabelEncoder()
    assert (defaults.positive_threshold, defaults.negative_threshold, defaults.allow_low_quality_matches,
            defaults.box_weights) == (0.5, 0.4, True, (1.0, 1.0, 1.0, 1.0))
    for kwargs, name in (({"positive_threshold": 1.5}, "positive_threshold"),
                         ({"negative_threshold": -0.1}, "negative_threshold"),
                         ({"negative_threshold": 0.6}, "negative_threshold"),
                         ({"box_weights": (1, 1, 1)}, "box_weights"), ({"box_weights": (1, 0, 1, 1)}, "box_weights")):
        with pytest.raises(ValueError, match=name):
            RetinaNetLabelEncoder(**kwargs)
