import numpy as np
import pytest
from keras import ops

from keras_cvx.layers.proposal_generator import ProposalGenerator
from tests.detection_reference import numpy_decode
from tests.ops.compiled import run_compiled
from tests.ops.test_nms import _numpy_greedy_nms


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _numpy_proposals(logits, deltas, anchors, level_sizes, image_size, pre, post, iou):
    """Per level: top-k, decode, clip, greedy NMS; then the best ``post`` over the levels."""
    kept, start = [], 0
    for size in level_sizes:
        order = np.argsort(-logits[start:start + size], kind="stable")[:pre] + start
        boxes = numpy_decode(deltas[order], anchors[order])
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, image_size[1])
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, image_size[0])
        scores = np.where((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]), logits[order], -np.inf)
        keep, count = _numpy_greedy_nms(boxes, scores, len(order), iou, -np.inf)
        kept += [(scores[k], boxes[k]) for k in keep[:count]]
        start += size
    kept.sort(key=lambda item: -item[0])
    return kept[:post]


@pytest.mark.parametrize("seed", [0, 1])
def test_against_numpy(seed):
    rng = np.random.default_rng(seed)
    level_sizes, image_size = (120, 40), (48, 64)
    n = sum(level_sizes)
    xy = rng.uniform(-10, 60, (n, 2))
    anchors = np.concatenate([xy, xy + rng.uniform(4, 30, (n, 2))], 1).astype("float32")
    logits = rng.normal(size=(2, n)).astype("float32")
    deltas = rng.normal(0, 0.3, (2, n, 4)).astype("float32")
    generator = ProposalGenerator(pre_nms_top_k=50, post_nms_top_k=40, iou_threshold=0.7)
    out = run_compiled(lambda a, b: generator(a, b, anchors, level_sizes=level_sizes, image_size=image_size),
                       logits, deltas)
    for b in range(2):
        expected = _numpy_proposals(logits[b], deltas[b], anchors, level_sizes, image_size, 50, 40, 0.7)
        valid = _np(out["valid"])[b]
        assert valid.sum() == len(expected) and valid[: len(expected)].all()
        np.testing.assert_allclose(_np(out["proposals"])[b][: len(expected)], [e[1] for e in expected],
                                   rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(_np(out["scores"])[b][: len(expected)], [e[0] for e in expected], rtol=1e-6)
        assert not _np(out["proposals"])[b][len(expected):].any()


def test_levels_never_suppress_each_other_and_no_gradient():
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], "float32")
    generator = ProposalGenerator(post_nms_top_k=3)
    out = generator(np.array([[2.0, 1.0, 0.5]], "float32"), np.zeros((1, 3, 4), "float32"), anchors,
                    level_sizes=[2, 1], image_size=(32, 32))
    assert _np(out["valid"]).tolist() == [[True, True, False]]          # one per level survives
    np.testing.assert_allclose(_np(out["scores"])[0, :2], [2.0, 0.5])


def test_degenerate_boxes_are_dropped():
    anchors = np.array([[40, 40, 50, 50], [0, 0, 10, 10]], "float32")   # the first lies outside the image
    out = ProposalGenerator(post_nms_top_k=2)(np.array([[5.0, 1.0]], "float32"), np.zeros((1, 2, 4), "float32"),
                                              anchors, image_size=(32, 32))
    assert _np(out["valid"]).tolist() == [[True, False]]
    np.testing.assert_allclose(_np(out["proposals"])[0, 0], [0, 0, 10, 10])


def test_config_and_validation():
    generator = ProposalGenerator(100, 50, 0.6, 1.0)
    assert ProposalGenerator.from_config(generator.get_config()).get_config() == generator.get_config()
    with pytest.raises(ValueError, match="min_size"):
        ProposalGenerator(min_size=-1)
    with pytest.raises(ValueError, match="image_size"):
        generator(np.zeros((1, 2), "float32"), np.zeros((1, 2, 4), "float32"), np.zeros((2, 4), "float32"))
    with pytest.raises(ValueError, match="level_sizes"):
        generator(np.zeros((1, 2), "float32"), np.zeros((1, 2, 4), "float32"), np.zeros((2, 4), "float32"),
                  level_sizes=[3], image_size=(8, 8))
