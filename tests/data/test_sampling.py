import numpy as np
import pytest
import tensorflow as tf

from keras_cvx.data.sampling import class_sampling_probabilities, resample_by_class

COUNTS = [64, 16, 4, 0]


def _dataset():
    labels = np.concatenate([np.full(n, j) for j, n in enumerate(COUNTS)]).astype("int64")
    return tf.data.Dataset.from_tensor_slices((np.arange(len(labels)), labels)), labels


@pytest.mark.parametrize("q, expected", [(0.0, [1 / 3] * 3 + [0]), (0.5, [8 / 14, 4 / 14, 2 / 14, 0]), (1.0, [64 / 84, 16 / 84, 4 / 84, 0])])
def test_probabilities(q, expected):
    np.testing.assert_allclose(class_sampling_probabilities(COUNTS, q), expected)


@pytest.mark.parametrize("q", [0.0, 0.5])
def test_sampled_class_frequencies_follow_p(q):
    dataset, _ = _dataset()
    sampled = resample_by_class(dataset, COUNTS, lambda i, y: y, exponent=q, seed=3).take(3000)
    labels = np.array([int(y) for _, y in sampled.as_numpy_iterator()])
    freq = np.bincount(labels, minlength=4) / len(labels)
    np.testing.assert_allclose(freq, class_sampling_probabilities(COUNTS, q), atol=0.03)


def test_same_seed_same_order_and_elements_keep_their_label():
    dataset, labels = _dataset()
    run = lambda: [(int(i), int(y)) for i, y in resample_by_class(dataset, COUNTS, lambda i, y: y, seed=5).take(50).as_numpy_iterator()]
    first = run()
    assert first == run()
    assert all(labels[i] == y for i, y in first)
    assert len({i for i, y in first if y == 2}) == 4  # the rare class's 4 samples are all used


def test_bad_arguments():
    with pytest.raises(ValueError, match="class_counts"):
        class_sampling_probabilities([0, 0], 0.5)
    with pytest.raises(ValueError, match="exponent"):
        class_sampling_probabilities([1, 2], 2.0)
