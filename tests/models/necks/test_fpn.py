"""Tests for keras_cvx.models.necks.fpn.FeaturePyramid: the two detectors' parameter counts on
ResNet-50's C2..C5 (literals from the papers' configurations), the forward pass against a
NumPy FPN, odd sizes, the shared layer harness and argument checks."""

import numpy as np
import pytest
from keras import ops

from keras_cvx.models.necks.fpn import FeaturePyramid
from tests.numpy_layers import conv2d as _conv
from tests.test_case import run_layer_test

RESNET50_CHANNELS = {"C2": 256, "C3": 512, "C4": 1024, "C5": 2048}


def resnet50_shapes(size=256):
    return {k: (None, size // 2 ** int(k[1]), size // 2 ** int(k[1]), c) for k, c in RESNET50_CHANNELS.items()}


@pytest.mark.single_backend  # initialising 3.9M parameters under JAX compiles one op per shape (slow); counts are backend-free
def test_parameter_counts_on_resnet50():
    faster_rcnn = FeaturePyramid(256, min_level=2, max_level=6, extra_levels="max_pool")
    faster_rcnn.build(resnet50_shapes())
    assert faster_rcnn.count_params() == 3_344_384
    fcos = FeaturePyramid()
    fcos.build(resnet50_shapes())
    assert fcos.count_params() == 3_868_672
    # the defaults are FCOS/CondInst's neck
    assert (fcos.channels, fcos.min_level, fcos.max_level, fcos.extra_levels) == (256, 3, 7, "conv")
    shapes = fcos.compute_output_shape(resnet50_shapes(800))
    assert [shapes[f"P{l}"][1] for l in range(3, 8)] == [100, 50, 25, 13, 7]


def numpy_fpn(fpn, inputs):
    weights = {layer.name: [np.asarray(ops.convert_to_numpy(w)) for w in layer.weights]
               for layer in fpn.lateral_convs + fpn.output_convs + fpn.extra_convs}
    merged, outputs = {}, {}
    for l in range(5, fpn.min_level - 1, -1):
        lateral = _conv(inputs[f"C{l}"], *weights[f"lateral{l}"])
        if l < 5:
            up = merged[l + 1].repeat(2, axis=1).repeat(2, axis=2)[:, : lateral.shape[1], : lateral.shape[2]]
            lateral = lateral + up
        merged[l] = lateral
        outputs[f"P{l}"] = _conv(lateral, *weights[f"output{l}"])
    previous = outputs["P5"]
    for l in range(6, fpn.max_level + 1):
        if fpn.extra_levels == "conv":
            previous = _conv(previous if l == 6 else np.maximum(previous, 0), *weights[f"p{l}"], stride=2)
        else:
            previous = previous[:, ::2, ::2]
        outputs[f"P{l}"] = previous
    return outputs


@pytest.mark.parametrize("kwargs, sizes", [(dict(), (12, 6, 3)),
                                           (dict(min_level=2, max_level=6, extra_levels="max_pool"), (20, 10, 5, 3))])
def test_forward_matches_numpy(kwargs, sizes):
    rng = np.random.default_rng(0)
    fpn = FeaturePyramid(channels=4, **kwargs)
    levels = range(fpn.min_level, 6)
    inputs = {f"C{l}": rng.normal(size=(2, s, s + 1, 3 + l)).astype("float32") for l, s in zip(levels, sizes)}
    inputs["C1"] = np.zeros((2, 1, 1, 1), "float32")  # other keys are ignored
    out = fpn(inputs)
    expected = numpy_fpn(fpn, inputs)
    assert sorted(out) == sorted(expected) == sorted(fpn.output_keys)
    for key in expected:
        np.testing.assert_allclose(ops.convert_to_numpy(out[key]), expected[key], rtol=1e-4, atol=1e-4, err_msg=key)
    # odd sizes: 3 -> P6 2 -> P7 1 (ceil), and upsampled maps cropped to the lateral (12 from 6, 6 from 3)
    if fpn.max_level == 7:
        assert [tuple(out[f"P{l}"].shape[1:3]) for l in range(3, 8)] == [(12, 13), (6, 7), (3, 4), (2, 2), (1, 1)]


def test_layer_harness():
    rng = np.random.default_rng(1)
    inputs = {"C3": rng.normal(size=(2, 8, 8, 4)), "C4": rng.normal(size=(2, 4, 4, 6)),
              "C5": rng.normal(size=(2, 2, 2, 8))}
    inputs = {k: v.astype("float32") for k, v in inputs.items()}
    run_layer_test(FeaturePyramid, dict(channels=4, min_level=3, max_level=7, extra_levels="conv"), inputs,
                   expected_output_shape={"P3": (2, 8, 8, 4), "P4": (2, 4, 4, 4), "P5": (2, 2, 2, 4),
                                          "P6": (2, 1, 1, 4), "P7": (2, 1, 1, 4)},
                   expected_num_trainable_weights=2 * (3 + 3 + 2))


def test_argument_checks():
    for kwargs, name in [({"channels": 0}, "channels"), ({"min_level": 1}, "min_level"),
                         ({"max_level": 4}, "max_level"), ({"extra_levels": "pool"}, "extra_levels")]:
        with pytest.raises(ValueError, match=name):
            FeaturePyramid(**kwargs)
    with pytest.raises(ValueError, match="C3"):
        FeaturePyramid().build({"C4": (None, 4, 4, 8), "C5": (None, 2, 2, 8)})
