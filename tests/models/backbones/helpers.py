"""Helpers shared by the backbone tests."""

import itertools
import os
import tempfile

import keras
import numpy as np
from keras import ops

from keras_cvx.layers.rezero import ReZero


def pairwise_rows(first, second, third, fourth):
    """A covering array: rows ``(a, b, c, d)`` with ``first × second`` in full,
    ``c = third[(i + j) mod 2]`` and ``d = fourth[(i + ⌊j/2⌋) mod 2]`` (``third``/``fourth``
    have two values, ``second`` four), so every pair of values of any two options appears in
    len(first)·len(second) models instead of the full product."""
    return [
        (a, b, third[(i + j) % 2], fourth[(i + j // 2) % 2])
        for (i, a), (j, b) in itertools.product(enumerate(first), enumerate(second))
    ]


def covers_every_pair(rows, factors):
    return all(
        {(row[a], row[b]) for row in rows} == set(itertools.product(factors[a], factors[b]))
        for a, b in itertools.combinations(range(len(factors)), 2)
    )


def layers_of(model, cls):
    """Layers of class ``cls`` in ``model``, including those inside ReZero branches."""
    found = []
    for layer in model.layers:
        if isinstance(layer, cls):
            found.append(layer)
        if isinstance(layer, ReZero):
            found += layers_of(layer.layer, cls)
    return found


def assert_keras_round_trip(model, x):
    """One training-mode call (moves the running statistics), then ``.keras`` save/load with
    ``safe_mode=True`` gives the same inference outputs and parameter count."""
    model(x, training=True)
    expected = model(x)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.keras")
        model.save(path)
        restored = keras.saving.load_model(path, safe_mode=True)
    actual = restored(x)
    for a, e in zip(keras.tree.flatten(actual), keras.tree.flatten(expected)):
        np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(e), rtol=1e-5, atol=1e-6)
    assert len(restored.trainable_weights) == len(model.trainable_weights)
    return restored
