import functools

import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.ops.sampling import sample_balanced
from tests.ops.compiled import run_compiled


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _check(labels, indices, sampled, num_samples, fraction):
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    want_pos = min(len(pos), int(np.floor(num_samples * fraction)))
    want_neg = min(len(neg), num_samples - want_pos)
    used = indices[indices >= 0]
    assert len(used) == want_pos + want_neg and len(set(used)) == len(used)  # no repeats
    np.testing.assert_array_equal(sampled, [1] * want_pos + [0] * want_neg + [-1] * (num_samples - len(used)))
    np.testing.assert_array_equal(labels[used], sampled[sampled >= 0])  # labels agree with indices


@pytest.mark.parametrize("num_pos,num_neg", [(3, 100), (50, 100), (0, 10), (40, 5), (0, 0)])
def test_counts_and_composition(num_pos, num_neg):
    labels = np.array([1] * num_pos + [0] * num_neg + [-1] * 20, "int32")
    labels = np.random.default_rng(0).permutation(labels)
    indices, sampled = sample_balanced(labels, 32, 0.25, seed=1)
    assert tuple(indices.shape) == (32,)
    _check(labels, _np(indices), _np(sampled), 32, 0.25)


def test_batched_compiled_and_n_smaller_than_samples():
    rng = np.random.default_rng(1)
    labels = rng.choice([-1, 0, 1], size=(4, 20), p=[0.2, 0.6, 0.2]).astype("int32")
    indices, sampled = run_compiled(functools.partial(sample_balanced, num_samples=24, positive_fraction=0.5, seed=3), labels)
    assert indices.shape == (4, 24)
    for b in range(4):
        _check(labels[b], indices[b], sampled[b], 24, 0.5)


def test_seeding_and_uniformity():
    labels = np.array([1] * 10 + [0] * 10, "int32")
    first = _np(sample_balanced(labels, 4, 0.5, seed=7)[0])
    np.testing.assert_array_equal(first, _np(sample_balanced(labels, 4, 0.5, seed=7)[0]))
    generator = keras.random.SeedGenerator(5)
    draws = np.stack([_np(sample_balanced(labels, 4, 0.5, seed=generator)[0]) for _ in range(300)])
    assert len({tuple(d) for d in draws}) > 100  # the generator advances
    counts = np.bincount(draws[:, :2].ravel(), minlength=20)[:10]  # each positive picked ~ 300*2/10 = 60 times
    assert counts.min() > 30 and counts.max() < 95


def test_validation():
    with pytest.raises(ValueError, match="num_samples"):
        sample_balanced(np.zeros(4, "int32"), 0)
    with pytest.raises(ValueError, match="positive_fraction"):
        sample_balanced(np.zeros(4, "int32"), 2, 1.5)
