import numpy as np
import pytest
from keras import ops

from keras_cvx.models.label_encoders.roi import RoISampler
from tests.detection_reference import numpy_encode, numpy_iou


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _case(seed, p=40, m=3):
    rng = np.random.default_rng(seed)
    gxy = rng.uniform(0, 60, (m, 2))
    gt = np.concatenate([gxy, gxy + rng.uniform(10, 30, (m, 2))], 1).astype("float32")
    jitter = gt[rng.integers(0, m, p)] + rng.normal(0, 4, (p, 4))
    proposals = np.concatenate([np.minimum(jitter[:, :2], jitter[:, 2:]), np.maximum(jitter[:, :2], jitter[:, 2:]) + 1],
                               1).astype("float32")
    return proposals, gt, np.array([1, 0, 2])[:m]


@pytest.mark.parametrize("seed", [0, 1])
def test_samples_against_numpy(seed):
    proposals, gt, labels = _case(seed)
    valid = np.ones(len(proposals), bool)
    valid[-5:] = False                                                   # padding proposals
    sampler = RoISampler(num_classes=3, num_samples=32, positive_fraction=0.25)
    out = {k: _np(v)[0] for k, v in sampler(proposals[None], valid[None], gt[None], labels[None], seed=seed).items()}
    candidates = np.concatenate([proposals[valid], gt])                  # ground truth added
    iou = numpy_iou(gt, candidates)
    positives, negatives = (iou.max(0) >= 0.5).sum(), (iou.max(0) < 0.5).sum()
    take_pos = min(positives, 8)
    assert (out["labels"] < 3).sum() - (out["labels"] < 0).sum() == take_pos
    assert (out["labels"] == 3).sum() == min(negatives, 32 - take_pos)
    for roi, label, matched, target in zip(out["rois"], out["labels"], out["matched_boxes"], out["box_targets"]):
        if label < 0:
            assert not roi.any()
            continue
        row = np.flatnonzero((np.abs(candidates - roi).max(1) < 1e-4))  # the RoI is a valid candidate
        assert row.size >= 1
        best = iou[:, row[0]].argmax()
        if label == 3:
            assert iou[:, row[0]].max() < 0.5 and not target.any()
        else:
            assert iou[best, row[0]] >= 0.5 and label == labels[best]
            np.testing.assert_allclose(matched, gt[best])
            np.testing.assert_allclose(target, numpy_encode(gt[best], roi, (10, 10, 5, 5)), rtol=1e-4, atol=1e-4)


def test_iou_exactly_one_half_is_foreground():
    gt = np.array([[[0, 0, 10, 10]]], "float32")
    proposals = np.array([[[0, 0, 10, 5], [0, 0, 10, 4.9]]], "float32")   # IoU 0.5 and 0.49
    out = RoISampler(2, num_samples=3, positive_fraction=1.0)(proposals, np.ones((1, 2), bool), gt,
                                                              np.array([[1]]), seed=0)
    rois, labels = _np(out["rois"])[0], _np(out["labels"])[0]
    by_height = {round(float(r[3]), 3): int(l) for r, l in zip(rois, labels)}
    assert by_height == {5.0: 1, 4.9: 2, 10.0: 1}                      # the GT itself is a positive


def test_unused_slots_when_few_candidates():
    out = RoISampler(2, num_samples=8)(np.zeros((1, 1, 4), "float32"), np.zeros((1, 1), bool),
                                       np.array([[[0, 0, 5, 5], [0, 0, 0, 0]]], "float32"), np.array([[0, -1]]), seed=0)
    assert sorted(_np(out["labels"])[0].tolist()) == [-1] * 7 + [0]


def test_config_and_validation():
    sampler = RoISampler(4, num_samples=16)
    assert RoISampler.from_config(sampler.get_config()).get_config() == sampler.get_config()
    with pytest.raises(ValueError, match="num_classes"):
        RoISampler(0)
    with pytest.raises(ValueError, match="box_coder_weights"):
        RoISampler(2, box_coder_weights=(1, 1))
