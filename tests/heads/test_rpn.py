import numpy as np
import pytest
from keras import ops

from keras_cvx.heads.rpn import RPNHead
from tests.test_case import run_layer_test


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


def _levels(seed, channels=4):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(2, s, s, channels)).astype("float32") for s in (4, 2)]


def test_harness():
    run_layer_test(RPNHead, {"anchors_per_location": 2, "num_levels": 2, "channels": 4}, _levels(0),
                   expected_output_shape={"objectness_logits": (2, 40), "anchor_deltas": (2, 40, 4)},
                   expected_num_trainable_weights=6)


def test_paper_parameter_count():
    """3x3 conv 256 + 1x1 to 3 logits + 1x1 to 12 deltas, shared by P2..P6 (spec: 593,935)."""
    head = RPNHead()
    head.build([(None, 200 >> l, 200 >> l, 256) for l in range(5)])
    assert head.count_params() == 593_935


def test_outputs_are_convs_flattened_level_row_column_anchor():
    levels = _levels(1)
    head = RPNHead(anchors_per_location=3, num_levels=2, channels=5)
    out = head(levels)
    kernel, bias = (_np(w) for w in head.conv.weights)
    obj_kernel, obj_bias = (_np(w) for w in head.objectness.weights)
    delta_kernel, delta_bias = (_np(w) for w in head.deltas.weights)
    logits, deltas = [], []
    for x in levels:
        padded = np.pad(x.astype(np.float64), [(0, 0), (1, 1), (1, 1), (0, 0)])
        h, w = x.shape[1:3]
        t = bias + sum(padded[:, dy:dy + h, dx:dx + w] @ kernel[dy, dx] for dy in range(3) for dx in range(3))
        t = np.maximum(t, 0)
        logits.append((t @ obj_kernel[0, 0] + obj_bias).reshape(2, -1))            # (row, col, anchor)
        deltas.append((t @ delta_kernel[0, 0] + delta_bias).reshape(2, -1, 4))      # 4 numbers per anchor
    np.testing.assert_allclose(_np(out["objectness_logits"]), np.concatenate(logits, 1), atol=1e-5)
    np.testing.assert_allclose(_np(out["anchor_deltas"]), np.concatenate(deltas, 1), atol=1e-5)


def test_initialisation_is_normal_001_with_zero_bias():
    head = RPNHead(channels=256)
    head.build([(None, 64, 64, 256)] * 5)
    kernel = _np(head.conv.kernel)
    assert abs(kernel.std() - 0.01) < 5e-4 and abs(kernel.mean()) < 5e-4
    assert not _np(head.objectness.bias).any() and not _np(head.deltas.bias).any()


@pytest.mark.parametrize("argument", ["anchors_per_location", "num_levels", "channels"])
def test_arguments_validated(argument):
    with pytest.raises(ValueError, match=argument):
        RPNHead(**{argument: 0})
    with pytest.raises(ValueError, match="features"):
        RPNHead(num_levels=2).build([(None, 4, 4, 8)])
