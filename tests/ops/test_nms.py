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


CONFIGS = [(0, 20, 0.5, float("-inf")), (1, 10, 0.3, 0.4), (2, 40, 0.7, 0.1), (3, 15, 0.45, 0.01)]


@pytest.mark.parametrize("config", CONFIGS)
def test_same_selections_as_reference_compiled(config):
    """4 configurations x 60 random cases = 240 cases, compiled (XLA / jax.jit), batched."""
    seed, max_out, iou_thr, score_thr = config
    boxes, scores = _random_cases(seed, 60, 48)
    fn = functools.partial(non_max_suppression, max_output_size=max_out, iou_threshold=iou_thr,
                           score_threshold=score_thr)
    indices, valid = run_compiled(fn, boxes, scores)
    assert indices.shape == (60, max_out) and valid.shape == (60,)
    for k in range(60):
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            yxyx = boxes[k][:, [1, 0, 3, 2]]
            expected = tf.image.non_max_suppression(yxyx, scores[k], max_out, iou_thr, score_thr).numpy()
            expected = np.pad(expected, (0, max_out - len(expected)), constant_values=-1)
            count = int((expected >= 0).sum())
        else:
            expected, count = _numpy_greedy_nms(boxes[k], scores[k], max_out, iou_thr, score_thr)
        np.testing.assert_array_equal(indices[k], expected, err_msg=f"case {k}")
        assert valid[k] == count


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

    boxes, scores = _random_cases(3, 20, 40)
    for k in range(20):
        expected = tf.image.non_max_suppression(boxes[k][:, [1, 0, 3, 2]], scores[k], 15, 0.5).numpy()
        ours, _ = _numpy_greedy_nms(boxes[k], scores[k], 15, 0.5, float("-inf"))
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


def test_class_aware_against_reference():
    boxes, scores = _random_cases(11, 30, 40)
    classes = np.random.default_rng(0).integers(0, 3, (30, 40)).astype("int32")
    fn = functools.partial(class_aware_non_max_suppression, max_output_size=25, iou_threshold=0.5,
                           score_threshold=0.05)
    indices, valid = run_compiled(fn, boxes, scores, classes)
    for k in range(30):
        expected, count = _numpy_greedy_nms(boxes[k], scores[k], 25, 0.5, 0.05, classes[k])
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
