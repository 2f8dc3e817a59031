import functools

import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.ops.nms import class_aware_non_max_suppression, non_max_suppression
from tests.ops.compiled import run_compiled


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _numpy_greedy_nms(boxes, scores, max_output_size, iou_threshold, score_threshold, classes=None):
    """Textbook greedy NMS, written independently of the implementation."""
    b = boxes.astype(np.float64)
    b = np.concatenate([np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:])], 1)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] > score_threshold]
    keep = []
    for i in order:
        suppressed = False
        for j in keep:
            if classes is not None and classes[i] != classes[j]:
                continue
            iw = max(0.0, min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]))
            ih = max(0.0, min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]))
            iou = 0.0 if area[i] <= 0 or area[j] <= 0 else iw * ih / (area[i] + area[j] - iw * ih)
            if iou > iou_threshold:
                suppressed = True
                break
        if not suppressed:
            keep.append(i)
        if len(keep) == max_output_size:
            break
    return np.array(keep + [-1] * (max_output_size - len(keep)), np.int32), len(keep)


def _random_cases(seed, cases, n):
    """Clustered boxes (so that suppression happens), distinct scores (no ties)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 100, (cases, 6, 2))[:, rng.integers(0, 6, n)]
    centres = centres + rng.normal(0, 6, (cases, n, 2))
    wh = rng.uniform(4, 40, (cases, n, 2))
    boxes = np.concatenate([centres - wh / 2, centres + wh / 2], -1).astype("float32")
    scores = np.stack([rng.permutation(n) for _ in range(cases)]).astype("float32") / n
    scores = scores + rng.uniform(0, 0.5 / n, (cases, n)).astype("float32")
    return boxes, scores


def _tf_reference(boxes, scores, max_out, iou_thr, score_thr):
    import tensorflow as tf

    expected = tf.image.non_max_suppression(boxes[:, [1, 0, 3, 2]], scores, max_out, iou_thr, score_thr).numpy()
    return np.pad(expected, (0, max_out - len(expected)), constant_values=-1), len(expected)


def _reference(boxes, scores, max_out, iou_thr, score_thr):
    """tf.image.non_max_suppression under TensorFlow, the NumPy loop elsewhere."""
    if keras.backend.backend() == "tensorflow":
        return _tf_reference(boxes, scores, max_out, iou_thr, score_thr)
    return _numpy_greedy_nms(boxes, scores, max_out, iou_thr, score_thr)


# (seed, cases, boxes, max_output_size, iou_threshold, score_threshold); 128-box tiles, so the
# last three walk several tiles (and images of a batch stop after different numbers of tiles).
CONFIGS = [
    (0, 60, 48, 20, 0.5, float("-inf")),
    (1, 60, 48, 10, 0.3, 0.4),
    (2, 60, 48, 40, 0.7, 0.1),
    (3, 60, 48, 15, 0.45, 0.01),
    (4, 8, 400, 60, 0.5, float("-inf")),
    (5, 8, 600, 300, 0.6, 0.2),
    (6, 8, 300, 250, 0.3, 0.05),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_same_selections_as_reference_compiled(config):
    """7 configurations, 252 random cases, compiled (XLA / jax.jit), batched."""
    seed, cases, n, max_out, iou_thr, score_thr = config
    boxes, scores = _random_cases(seed, cases, n)
    fn = functools.partial(non_max_suppression, max_output_size=max_out, iou_threshold=iou_thr,
                           score_threshold=score_thr)
    indices, valid = run_compiled(fn, boxes, scores)
    assert indices.shape == (cases, max_out) and valid.shape == (cases,)
    for k in range(cases):
        expected, count = _reference(boxes[k], scores[k], max_out, iou_thr, score_thr)
        np.testing.assert_array_equal(indices[k], expected, err_msg=f"case {k}")
        assert valid[k] == count


def _tied_cases(seed, cases, n):
    """Clustered boxes whose scores take only 5 values: many ties, resolved by index."""
    boxes, _ = _random_cases(seed, cases, n)
    scores = np.random.default_rng(seed).integers(1, 6, (cases, n)).astype("float32") / 5
    return boxes, scores


@pytest.mark.parametrize("n, max_out", [(40, 30), (300, 200)])
def test_tied_scores_compiled(n, max_out):
    boxes, scores = _tied_cases(8, 10, n)
    fn = functools.partial(non_max_suppression, max_output_size=max_out, iou_threshold=0.5, score_threshold=0.2)
    indices, valid = run_compiled(fn, boxes, scores)
    for k in range(10):
        expected, count = _reference(boxes[k], scores[k], max_out, 0.5, 0.2)
        np.testing.assert_array_equal(indices[k], expected, err_msg=f"case {k}")
        assert valid[k] == count


# IoU([0, 0, 3, 1], [1, 0, 4, 1]) = 2 / 4 = 0.5 exactly in float32.
AT_THRESHOLD = np.array([[0, 0, 3, 1], [1, 0, 4, 1], [10, 10, 12, 12]], "float32")


def test_pair_exactly_at_iou_threshold_is_kept():
    scores = np.array([0.9, 0.8, 0.7], "float32")
    fn = functools.partial(non_max_suppression, max_output_size=3, iou_threshold=0.5)
    indices, valid = run_compiled(fn, AT_THRESHOLD, scores)
    np.testing.assert_array_equal(indices, [0, 1, 2])  # IoU 0.5 is not > 0.5
    assert valid == 3
    indices, _ = non_max_suppression(AT_THRESHOLD, scores, 3, iou_threshold=0.4999)
    np.testing.assert_array_equal(_np(indices), [0, 2, -1])


def test_score_exactly_at_score_threshold_is_dropped():
    scores = np.array([0.9, 0.8, 0.7], "float32")
    fn = functools.partial(non_max_suppression, max_output_size=3, iou_threshold=0.5, score_threshold=0.8)
    indices, valid = run_compiled(fn, AT_THRESHOLD, scores)
    np.testing.assert_array_equal(indices, [0, -1, -1])  # 0.8 is not > 0.8
    assert valid == 1


@pytest.mark.tensorflow_only
def test_threshold_conventions_are_tf_images():
    """The conventions above are tf.image.non_max_suppression's, checked on the same pairs."""
    import tensorflow as tf

    yxyx = AT_THRESHOLD[:, [1, 0, 3, 2]]
    scores = np.array([0.9, 0.8, 0.7], "float32")
    np.testing.assert_array_equal(tf.image.non_max_suppression(yxyx, scores, 3, 0.5).numpy(), [0, 1, 2])
    np.testing.assert_array_equal(tf.image.non_max_suppression(yxyx, scores, 3, 0.4999).numpy(), [0, 2])
    np.testing.assert_array_equal(tf.image.non_max_suppression(yxyx, scores, 3, 0.5, 0.8).numpy(), [0])
    tied = np.array([0.5, 0.7, 0.5, 0.7], "float32")
    apart = np.array([[0, 0, 1, 1], [0, 2, 1, 3], [0, 4, 1, 5], [0, 6, 1, 7]], "float32")
    np.testing.assert_array_equal(tf.image.non_max_suppression(apart, tied, 4, 0.5).numpy(), [1, 3, 0, 2])
    ours, _ = non_max_suppression(apart[:, [1, 0, 3, 2]], tied, 4, 0.5)
    np.testing.assert_array_equal(_np(ours), [1, 3, 0, 2])


@pytest.mark.parametrize("batched", [False, True])
def test_zero_boxes(batched):
    boxes, scores = np.zeros((0, 4), "float32"), np.zeros((0,), "float32")
    if batched:
        boxes, scores = np.zeros((3, 0, 4), "float32"), np.zeros((3, 0), "float32")
    fn = functools.partial(non_max_suppression, max_output_size=4, iou_threshold=0.5)
    indices, valid = run_compiled(fn, boxes, scores)
    assert indices.shape == ((3, 4) if batched else (4,))
    assert np.all(indices == -1) and np.all(valid == 0)
    classes = np.zeros(scores.shape, "int32")
    indices, valid = class_aware_non_max_suppression(boxes, scores, classes, 4)
    assert np.all(_np(indices) == -1) and np.all(_np(valid) == 0)


def test_numpy_reference_agrees_with_eager_unbatched():
    boxes, scores = _random_cases(7, 5, 30)
    for k in range(5):
        indices, valid = non_max_suppression(boxes[k], scores[k], 12, 0.4, 0.2)
        expected, count = _numpy_greedy_nms(boxes[k], scores[k], 12, 0.4, 0.2)
        np.testing.assert_array_equal(_np(indices), expected)
        assert int(_np(valid)) == count


@pytest.mark.tensorflow_only
def test_numpy_reference_agrees_with_tf_image():
    import tensorflow as tf

    for boxes, scores in (_random_cases(3, 20, 40), _tied_cases(4, 20, 40)):
        for k in range(20):
            expected = tf.image.non_max_suppression(boxes[k][:, [1, 0, 3, 2]], scores[k], 15, 0.5, 0.2).numpy()
            ours, _ = _numpy_greedy_nms(boxes[k], scores[k], 15, 0.5, 0.2)
            np.testing.assert_array_equal(ours[: len(expected)], expected)


def test_hand_computed_and_padding():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [10, 10, 0, 0]], "float32")
    scores = np.array([0.9, 0.8, 0.7, 0.6], "float32")
    # box 1 overlaps box 0 with IoU 90/110 > 0.5; box 3 is box 0 with flipped corners.
    indices, valid = non_max_suppression(boxes, scores, 5, 0.5)
    np.testing.assert_array_equal(_np(indices), [0, 2, -1, -1, -1])
    assert int(_np(valid)) == 2
    indices, valid = non_max_suppression(boxes, scores, 5, 0.5, score_threshold=0.75)
    np.testing.assert_array_equal(_np(indices), [0, -1, -1, -1, -1])
    indices, _ = non_max_suppression(boxes.astype("float16"), scores.astype("float16"), 2, 0.95)
    np.testing.assert_array_equal(_np(indices), [0, 1])
    # Neither a NaN score nor a box with a NaN coordinate is ever selected (tf.image's NMS
    # selects such a box); box 3 (= box 0) is then suppressed by box 1 (IoU 90/110).
    nan_boxes = boxes.copy()
    nan_boxes[0, 2] = np.nan
    nan_scores = np.array([0.9, 0.8, np.nan, 0.6], "float32")
    indices, valid = non_max_suppression(nan_boxes, nan_scores, 5, 0.5)
    np.testing.assert_array_equal(_np(indices), [1, -1, -1, -1, -1])
    assert int(_np(valid)) == 1
    nan_boxes[1, 1] = np.inf  # an infinite coordinate too: box 3 is selected
    indices, valid = non_max_suppression(nan_boxes, nan_scores, 5, 0.5)
    np.testing.assert_array_equal(_np(indices), [3, -1, -1, -1, -1])


@pytest.mark.parametrize("cases, n, max_out", [(30, 40, 25), (4, 500, 150)])
def test_class_aware_against_reference(cases, n, max_out):
    boxes, scores = _random_cases(11, cases, n)
    classes = np.random.default_rng(0).integers(0, 3, (cases, n)).astype("int32")
    fn = functools.partial(class_aware_non_max_suppression, max_output_size=max_out, iou_threshold=0.5,
                           score_threshold=0.05)
    indices, valid = run_compiled(fn, boxes, scores, classes)
    for k in range(cases):
        expected, count = _numpy_greedy_nms(boxes[k], scores[k], max_out, 0.5, 0.05, classes[k])
        np.testing.assert_array_equal(indices[k], expected)
        assert valid[k] == count
    # two identical boxes of different classes both survive; of the same class only one
    same = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], "float32")
    idx, _ = class_aware_non_max_suppression(same, np.array([0.9, 0.8], "float32"), [0, 1], 2)
    np.testing.assert_array_equal(_np(idx), [0, 1])
    idx, _ = class_aware_non_max_suppression(same, np.array([0.9, 0.8], "float32"), [1, 1], 2)
    np.testing.assert_array_equal(_np(idx), [0, -1])


def test_argument_validation():
    with pytest.raises(ValueError, match="max_output_size"):
        non_max_suppression(np.zeros((2, 4)), np.zeros(2), 0)
    with pytest.raises(ValueError, match="iou_threshold"):
        non_max_suppression(np.zeros((2, 4)), np.zeros(2), 2, iou_threshold=1.5)
    with pytest.raises(ValueError, match="same number of boxes"):
        non_max_suppression(np.zeros((3, 4)), np.zeros(2), 2)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        non_max_suppression(np.zeros((2, 5)), np.zeros(2), 2)
    with pytest.raises(ValueError, match="classes"):
        class_aware_non_max_suppression(np.zeros((2, 4)), np.zeros(2), np.zeros(3, "int32"), 2)


@pytest.mark.tensorflow_only
def test_unknown_batch_size_as_in_a_serving_signature():
    import tensorflow as tf

    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [10, 10, 0, 0]], "float32")
    scores = np.array([0.9, 0.8, 0.7, 0.6], "float32")
    signature = [tf.TensorSpec([None, 4, 4], tf.float32), tf.TensorSpec([None, 4], tf.float32)]
    serve = tf.function(lambda b, s: non_max_suppression(b, s, 5, 0.5), input_signature=signature)
    indices, valid = serve(np.stack([boxes] * 3), np.stack([scores] * 3))
    np.testing.assert_array_equal(indices.numpy(), [[0, 2, -1, -1, -1]] * 3)
    np.testing.assert_array_equal(valid.numpy(), [2, 2, 2])
