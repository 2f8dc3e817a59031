"""Keras 3 initializers draw from a seed fixed when the initializer is made: one instance
reused for several sub-layers gives all of them the same initial values. Layers that build
several sub-layers of one shape must therefore hand each its own initializer."""

import itertools

import numpy as np
import pytest

from keras_cvx.heads.ssd import SSDHead
from keras_cvx.layers.rezero import ReZeroTransformerEncoder
from keras_cvx.models.necks.fpn import FeaturePyramid


def _ssd_head():
    # 4 anchors x (3 classes + background) = 4 anchors x 4 box offsets: equal kernel shapes
    return SSDHead(3, anchors_per_location=(4, 4)), [np.zeros((1, 4, 4, 8), "float32"), np.zeros((1, 2, 2, 8), "float32")]


def _fpn():
    shapes = {f"C{l}": (1, 64 // 2**l, 64 // 2**l, 8) for l in range(2, 6)}
    return FeaturePyramid(channels=8), {k: np.zeros(s, "float32") for k, s in shapes.items()}


def _rezero_encoder():
    return ReZeroTransformerEncoder(num_heads=2, feedforward_dim=8), np.zeros((1, 3, 8), "float32")


@pytest.mark.parametrize("make", [_ssd_head, _fpn, _rezero_encoder], ids=lambda f: f.__name__[1:])
def test_sub_layers_of_one_shape_start_from_different_values(make):
    layer, inputs = make()
    layer(inputs)
    kernels = [v for v in layer.weights if v.path.endswith("kernel")]
    pairs = [(a, b) for a, b in itertools.combinations(kernels, 2) if tuple(a.shape) == tuple(b.shape)]
    assert pairs, "the layer should hold kernels of equal shape"
    for a, b in pairs:
        assert not np.array_equal(np.asarray(a.numpy()), np.asarray(b.numpy())), (a.path, b.path)
