import json

import numpy as np
import pytest
import tensorflow as tf

from keras_cvx.data.sampling import apply_repeat_factors, class_sampling_probabilities, repeat_factors, resample_by_class

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


# t = 0.5 over 10 annotated images (ids 1..10; 11 and 12 have none), categories listed out of id order:
# id 2 in images 1-5 (f = 0.5 = t: r = 1), id 5 in image 5 (f = 0.1: r = sqrt(5)), id 9 twice in
# image 7 and once in 6 (f = 0.2: r = sqrt(2.5)), id 7 in images 8-10 (f = 0.3: r = sqrt(5 / 3)),
# id 11 in none (f = 0: r = inf)
RFS_ANNOTATIONS = [(i, 2) for i in range(1, 6)] + [(5, 5), (6, 9), (7, 9), (7, 9), (8, 7), (9, 7), (10, 7)]
RFS_IMAGE_ORDER = [12, 3, 1, 2, 5, 4, 6, 7, 11, 8, 9, 10]
RFS_FACTORS = {5: 5 ** 0.5, 6: 2.5 ** 0.5, 7: 2.5 ** 0.5, 8: (5 / 3) ** 0.5, 9: (5 / 3) ** 0.5, 10: (5 / 3) ** 0.5}


def _rfs_json():
    return {
        "images": [{"id": i, "file_name": f"{i}.png", "height": 8, "width": 8} for i in RFS_IMAGE_ORDER],
        "categories": [{"id": c, "name": str(c)} for c in (9, 2, 11, 5, 7)],
        "annotations": [
            {"id": k, "image_id": i, "category_id": c, "bbox": [0, 0, 2, 2]} for k, (i, c) in enumerate(RFS_ANNOTATIONS)
        ],
    }


@pytest.mark.parametrize("as_file", [True, False])
def test_repeat_factors_hand_computed(tmp_path, as_file):
    data = _rfs_json()
    if as_file:
        (tmp_path / "ann.json").write_text(json.dumps(data))
    stats = repeat_factors(str(tmp_path / "ann.json") if as_file else data, threshold=0.5)
    np.testing.assert_array_equal(stats["image_ids"], RFS_IMAGE_ORDER)
    assert stats["image_ids"].dtype == np.int64
    np.testing.assert_allclose(stats["factors"], [RFS_FACTORS.get(i, 1.0) for i in RFS_IMAGE_ORDER], rtol=1e-12)
    assert stats["factors"][RFS_IMAGE_ORDER.index(1)] == 1.0  # f = t exactly: r = 1 exactly
    # categories by id: 2, 5, 7, 9, 11
    np.testing.assert_allclose(stats["class_factors"], [1.0, 5 ** 0.5, (5 / 3) ** 0.5, 2.5 ** 0.5, np.inf])


def test_repeat_factors_small_threshold_repeats_nothing():
    stats = repeat_factors(_rfs_json(), threshold=0.05)  # every category with images has f >= 0.1
    np.testing.assert_array_equal(stats["factors"], np.ones(12))


@pytest.mark.parametrize("threshold", [0, -0.1, 1.5, True, "0.1", None])
def test_repeat_factors_rejects_bad_threshold(threshold):
    with pytest.raises(ValueError, match="threshold"):
        repeat_factors(_rfs_json(), threshold=threshold)


def _repeat_counts(factors, seed):
    table = tf.constant(factors, tf.float64)
    dataset = apply_repeat_factors(tf.data.Dataset.range(len(factors)), lambda i: tf.gather(table, i), seed=seed)
    emitted = np.array(list(dataset.as_numpy_iterator()), np.int64)
    # each element's repeats come in a row, in the input order
    assert np.all(np.diff(emitted) >= 0)
    return np.bincount(emitted, minlength=len(factors))


@pytest.mark.parametrize("factor", [2.25, 0.25])
def test_stochastic_rounding_has_the_factor_as_mean(factor):
    counts = _repeat_counts([factor] * 2000, seed=0)
    assert set(counts.tolist()) == {np.floor(factor), np.floor(factor) + 1}
    # Bernoulli(0.25) over 2000 draws: standard deviation of the mean 0.0097
    assert abs(counts.mean() - factor) < 0.04


def test_integer_factors_are_exact():
    factors = [0.0, 1.0, 3.0, 2.0, 5.0]
    for seed in (0, 1):
        np.testing.assert_array_equal(_repeat_counts(factors, seed), factors)


def test_same_seed_same_repeats_and_new_draws_each_epoch():
    factors = [1.5] * 40
    first = _repeat_counts(factors, seed=7)
    np.testing.assert_array_equal(first, _repeat_counts(factors, seed=7))
    assert not np.array_equal(first, _repeat_counts(factors, seed=8))
    table = tf.constant(factors, tf.float64)
    epochs = apply_repeat_factors(tf.data.Dataset.range(40), lambda i: tf.gather(table, i), seed=7).repeat(2)
    emitted = np.array(list(epochs.as_numpy_iterator()))
    boundary = int(first.sum())  # the first epoch is the one a fresh dataset with the seed gives
    np.testing.assert_array_equal(np.bincount(emitted[:boundary], minlength=40), first)
    assert not np.array_equal(np.bincount(emitted[boundary:], minlength=40), first)


def test_tuple_elements_and_bad_factors():
    dataset = tf.data.Dataset.from_tensor_slices((np.arange(3), np.array([2.0, 0.0, 1.0])))
    repeated = apply_repeat_factors(dataset, lambda i, factor: factor, seed=0)
    assert [(int(i), float(f)) for i, f in repeated.as_numpy_iterator()] == [(0, 2.0), (0, 2.0), (2, 1.0)]
    for bad in (-1.0, np.inf, np.nan):  # count as 0: skipped
        assert list(apply_repeat_factors(tf.data.Dataset.range(2), lambda i, bad=bad: tf.constant(bad), seed=0)) == []


def test_the_repeated_iterator_can_be_checkpointed(tmp_path):
    """The Trainer saves the input position: the transformation must hold no stateful op."""
    repeated = apply_repeat_factors(tf.data.Dataset.range(6), lambda i: tf.cast(i % 3, tf.float64) + 0.5, seed=1)
    iterator = iter(repeated.repeat())
    checkpoint = tf.train.Checkpoint(iterator=iterator)
    first = [int(next(iterator)) for _ in range(3)]
    path = checkpoint.save(str(tmp_path / "ckpt"))
    expected = [int(next(iterator)) for _ in range(5)]
    checkpoint.restore(path)
    assert first and [int(next(iterator)) for _ in range(5)] == expected
