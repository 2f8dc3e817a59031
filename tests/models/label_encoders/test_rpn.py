import numpy as np
import pytest
from keras import ops

from keras_cvx.models.label_encoders.rpn import RPNLabelEncoder
from tests.detection_reference import numpy_encode, numpy_iou


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _numpy_states(gt_boxes, gt_labels, anchors, pos=0.7, neg=0.3, low_quality_min=0.3):
    """Faster R-CNN's anchor labels (arXiv 1506.01497 §3.1.2), loops over ground truths."""
    valid = gt_labels >= 0
    iou = numpy_iou(gt_boxes[valid], anchors)                  # [G, N]
    best = iou.max(0) if len(iou) else np.zeros(len(anchors))
    state = np.where(best >= pos, 1, np.where(best < neg, 0, -1))
    for g in range(len(iou)):
        top = iou[g].max()
        if top > 0 and top >= low_quality_min:
            state[iou[g] == top] = 1
    matched = np.flatnonzero(valid)[iou.argmax(0)] if len(iou) else np.zeros(len(anchors), int)
    return state, matched


def _random_case(seed, n=300, m=4):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 80, (n, 2))
    anchors = np.concatenate([xy, xy + rng.uniform(8, 40, (n, 2))], 1).astype("float32")
    gxy = rng.uniform(0, 70, (m, 2))
    gt = np.concatenate([gxy, gxy + rng.uniform(10, 40, (m, 2))], 1).astype("float32")
    labels = np.array([2, 0, 1, -1][:m])
    return anchors, gt, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_anchors_against_numpy(seed):
    anchors, gt, labels = _random_case(seed)
    encoder = RPNLabelEncoder(num_samples=64, positive_fraction=0.5)
    out = encoder(gt[None], labels[None], anchors, seed=seed)
    indices, sampled, targets = _np(out["indices"])[0], _np(out["labels"])[0], _np(out["box_targets"])[0]
    state, matched = _numpy_states(gt, labels, anchors)
    num_pos, num_neg = (state == 1).sum(), (state == 0).sum()
    take_pos = min(num_pos, 32)
    take_neg = min(num_neg, 64 - take_pos)
    assert (sampled == 1).sum() == take_pos and (sampled == 0).sum() == take_neg
    assert (sampled == -1).sum() == 64 - take_pos - take_neg and (indices[sampled == -1] == -1).all()
    used = indices[sampled >= 0]
    assert len(set(used.tolist())) == len(used)                       # without replacement
    np.testing.assert_array_equal(state[used], sampled[sampled >= 0])  # each sample has its true label
    positive = indices[sampled == 1]
    np.testing.assert_allclose(targets[sampled == 1], numpy_encode(gt[matched[positive]], anchors[positive]),
                               rtol=1e-4, atol=1e-4)
    assert not targets[sampled != 1].any()


def test_exactly_at_the_thresholds():
    """IoU 0.7 is positive, IoU 0.3 is ignored (negatives need < 0.3), below 0.3 negative."""
    gt = np.array([[0, 0, 10, 10], [100, 100, 200, 200]], "float32")
    anchors = np.array([
        [0, 0, 10, 7],        # IoU 0.7 with gt 0 -> positive
        [0, 0, 10, 3],        # IoU 0.3 -> ignored
        [0, 0, 10, 2.9],      # IoU 0.29 -> negative
        [100, 100, 200, 300],  # IoU 0.5 with gt 1 and its best anchor -> low-quality positive
        [0, 0, 10, 10],       # IoU 1 -> positive
    ], "float32")
    out = RPNLabelEncoder(num_samples=5, positive_fraction=1.0)(gt[None], np.array([[0, 1]]), anchors, seed=0)
    by_anchor = dict(zip(_np(out["indices"])[0].tolist(), _np(out["labels"])[0].tolist()))
    assert by_anchor == {-1: -1, 0: 1, 2: 0, 3: 1, 4: 1}


def test_ground_truth_below_min_pos_iou_claims_no_anchor():
    gt = np.array([[[0, 0, 10, 10]]], "float32")
    anchors = np.array([[0, 0, 10, 2.5], [50, 50, 60, 60]], "float32")    # best IoU 0.25 < 0.3
    out = RPNLabelEncoder(num_samples=2)(gt, np.array([[0]]), anchors, seed=0)
    assert sorted(_np(out["labels"])[0].tolist()) == [0, 0]


def test_padding_only_image_gives_negatives():
    anchors, _, _ = _random_case(3, n=50)
    out = RPNLabelEncoder(num_samples=16)(np.zeros((1, 2, 4), "float32"), np.full((1, 2), -1), anchors, seed=0)
    assert (_np(out["labels"]) == 0).all()


def test_config_and_validation():
    encoder = RPNLabelEncoder(num_samples=8, positive_fraction=0.25)
    assert RPNLabelEncoder.from_config(encoder.get_config()).get_config() == encoder.get_config()
    for kwargs, name in (({"num_samples": 0}, "num_samples"), ({"positive_fraction": 1.5}, "positive_fraction"),
                         ({"positive_threshold": 2.0}, "positive_threshold")):
        with pytest.raises(ValueError, match=name):
            RPNLabelEncoder(**kwargs)
