"""Tests for keras_cvx.heads.tsd (TSD, arXiv 2003.07540 Sec. 3): the parameter counts of Sec. 7
(offset nets 3,368,804, branches 28,206,485, whole head 45,886,094, inference 31,575,289); the
ΔC layout (the reference's [49 x, 49 y] outputs -> (ph, pw, x|y)) seen through the pooled
features; the shift of P̂_r (eqs. 3-4); the forward pass against NumPy (offset nets, flatten
order, dense branches, sibling head) with the already-tested deformable pooling as the
reference for the pooling; the sibling head is not evaluated at inference; gradient paths;
initialisation; config, compiled call, mixed precision and .keras round trip by hand (the
harness's compiled fit step costs ~80 s under TensorFlow for the deformable pooling's
gradient, so the layer is checked piece by piece instead)."""

import math
import os
import tempfile

import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.heads.roi_box import SiblingBoxHead
from keras_cvx.heads.tsd import TSDHead, shift_proposals
from keras_cvx.ops.deformable_roi_pool import multilevel_deformable_roi_pool
from tests.ops.compiled import run_compiled

RNG = np.random.default_rng(0)
B, R, K, C = 2, 3, 2, 4  # images, RoIs, classes, channels
ROI_FEATURES = RNG.normal(size=(B, R, 3, 3, C)).astype("float32")
PYRAMID = [RNG.normal(size=(B, 32 >> l, 32 >> l, C)).astype("float32") for l in range(2)]  # P2, P3 of a 128 image
PROPOSALS = np.array([[[4, 4, 40, 50], [10, 20, 100, 90], [0, 0, 20, 20]],
                      [[30, 8, 60, 30], [2, 40, 120, 126], [50, 50, 51, 53]]], "float32")
LEVELS = np.array([[2, 3, 2], [2, 3, 2]], "int32")
SMALL = dict(num_classes=K, hidden_units=16, offset_units=8, output_size=3, sampling_ratio=2)


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


def _count(layers):
    return sum(int(np.prod(w.shape)) for layer in layers for w in layer.weights)


def _head(**kwargs):
    head = TSDHead(**dict(SMALL, **kwargs))
    head.build(ROI_FEATURES.shape, [p.shape for p in PYRAMID], PROPOSALS.shape, LEVELS.shape)
    return head


def _randomise(head, rng, scale=0.3):
    for w in head.weights:
        w.assign(rng.normal(0, scale, w.shape).astype("float32"))


@pytest.mark.single_backend  # 46 M weights initialise slowly under JAX; counts are backend-free
def test_parameter_counts_k80():
    head = TSDHead(80)
    head.build((None, 512, 7, 7, 256), [(None, 200 >> l, 200 >> l, 256) for l in range(4)], (None, 512, 4),
               (None, 512))
    offsets = [head.shared_fc, head.delta_c_fc, head.delta_c, head.delta_r_fc, head.delta_r]
    branches = head.cls_fcs + [head.tsd_cls_score] + head.reg_fcs + [head.tsd_bbox_pred]
    assert (head.delta_c.units, head.delta_r.units) == (98, 2)
    assert (head.tsd_cls_score.units, head.tsd_bbox_pred.units) == (81, 324)
    assert _count(offsets) == 3_368_804
    assert _count(branches) == 28_206_485
    assert _count([head.sibling]) == 14_310_805
    assert head.count_params() == 45_886_094
    assert head.count_inference_params() == 31_575_289


def test_shift_proposals_matches_eqs_3_4():
    boxes = np.array([[10, 20, 29, 59], [0, 0, 0, 0], [5.5, 1, 8, 3]], "float32")
    offsets = np.array([[1.0, -0.5], [3.0, 2.0], [0.0, 0.0]], "float32")
    # w = 20, h = 40: x += 0.1 * 1 * 20 = 2, y += 0.1 * -0.5 * 40 = -2; a 1x1 box (+1 sizes): 0.3, 0.2
    expected = [[12, 18, 31, 57], [0.3, 0.2, 0.3, 0.2], [5.5, 1, 8, 3]]
    np.testing.assert_allclose(_np(shift_proposals(boxes, offsets)), expected, atol=1e-6)
    np.testing.assert_allclose(_np(shift_proposals(boxes, offsets, gamma=0.2))[0], [14, 16, 33, 55], atol=1e-6)


def _identity_head():
    """A head whose classification branch passes flatten(F̂_c) through (ramps >= 0, identity fcs):
    class_logits = F̂_c in NHWC flatten order; 2 x 2 bins x 2 channels = 8 = K + 1 outputs."""
    head = TSDHead(num_classes=7, hidden_units=8, offset_units=4, output_size=2, sampling_ratio=4)
    head.build((1, 1, 2, 2, 2), [(1, 32, 32, 2), (1, 16, 16, 2)], (1, 1, 4), (1, 1))
    for layer in head.cls_fcs + [head.tsd_cls_score]:
        layer.kernel.assign(np.eye(8, dtype="float32"))
        layer.bias.assign(np.zeros(8, "float32"))
    head.delta_c.kernel.assign(np.zeros(head.delta_c.kernel.shape, "float32"))
    return head


def _ramps():
    """P2 with channel 0 = x and channel 1 = y (feature pixels): bilinear sampling is exact on it."""
    y, x = np.meshgrid(np.arange(32.0), np.arange(32.0), indexing="ij")
    return [np.stack([x, y], -1)[None].astype("float32"), np.zeros((1, 16, 16, 2), "float32")]


@pytest.mark.parametrize("bin_, axis", [((0, 1), 0), ((1, 0), 1), ((1, 1), 0)])
def test_class_offset_slot_moves_only_its_bin_along_its_axis(bin_, axis):
    """delta_c output a k² + ph k + pw (a = 0: x, 1: y; the reference's (N, 2, k, k)) moves only
    bin (ph, pw), along x or y, by gamma * offset * RoI size."""
    head, (ph, pw), k = _identity_head(), bin_, 2
    # Box (32, 32, 71, 79) on P2 (stride 4): start 7.5, roi_w = 72 / 4 - 0.5 - 7.5 = 10, roi_h = 80 / 4 - 8 = 12.
    proposals, levels = np.array([[[32, 32, 71, 79]]], "float32"), np.array([[2]], "int32")
    roi = np.ones((1, 1, 2, 2, 2), "float32")
    head.delta_c.bias.assign(np.zeros(2 * k * k, "float32"))
    still = head(roi, _ramps(), proposals, levels)
    bias = np.zeros(2 * k * k, "float32")
    bias[axis * k * k + ph * k + pw] = 2.0
    head.delta_c.bias.assign(bias)
    moved = head(roi, _ramps(), proposals, levels)
    expected_offsets = np.zeros((k, k, 2))
    expected_offsets[ph, pw, axis] = 2.0
    np.testing.assert_array_equal(_np(moved["class_offsets"])[0, 0], expected_offsets)
    change = (_np(moved["class_logits"]) - _np(still["class_logits"]))[0, 0].reshape(k, k, 2)  # NHWC flatten
    expected = np.zeros((k, k, 2))
    expected[ph, pw, axis] = 0.1 * 2.0 * (10.0, 12.0)[axis]  # gamma * offset * roi size (feature pixels)
    np.testing.assert_allclose(change, expected, atol=1e-4)
    # Unmoved, bin (ph, pw)'s mean sample position: start + bin * size / 2 + (0 + 1 + 2 + 3) / 4 * size / 8.
    centre = 7.5 + np.array([pw, ph]) * np.array([10.0, 12.0]) / 2 + 1.5 * np.array([10.0, 12.0]) / 8
    np.testing.assert_allclose(_np(still["class_logits"])[0, 0].reshape(k, k, 2)[ph, pw], centre, atol=1e-4)


def _dense(x, layer, relu=True):
    y = x @ _np(layer.kernel) + _np(layer.bias)
    return np.maximum(y, 0) if relu else y


def test_forward_matches_numpy():
    head = _head()
    _randomise(head, np.random.default_rng(1))
    out = head(ROI_FEATURES, PYRAMID, PROPOSALS, LEVELS, training=True)
    n, k = K + 1, 3
    # Offset nets on the NHWC-flattened RoI features; delta_c's outputs are [k*k x, k*k y].
    shared = _dense(ROI_FEATURES.reshape(B, R, -1).astype(np.float64), head.shared_fc)
    raw_c = _dense(_dense(shared, head.delta_c_fc), head.delta_c, relu=False)
    class_offsets = np.stack([raw_c[..., : k * k].reshape(B, R, k, k), raw_c[..., k * k:].reshape(B, R, k, k)], -1)
    region_offsets = _dense(_dense(shared, head.delta_r_fc), head.delta_r, relu=False)
    np.testing.assert_allclose(_np(out["class_offsets"]), class_offsets, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_np(out["region_offsets"]), region_offsets, rtol=1e-4, atol=1e-4)
    assert np.abs(region_offsets).max() > 0.5  # the offsets move the samples by whole pixels
    # P̂_r (eqs. 3-4, "+1" sizes).
    w = PROPOSALS[..., 2] - PROPOSALS[..., 0] + 1
    h = PROPOSALS[..., 3] - PROPOSALS[..., 1] + 1
    dx, dy = 0.1 * region_offsets[..., 0] * w, 0.1 * region_offsets[..., 1] * h
    shifted = PROPOSALS + np.stack([dx, dy, dx, dy], -1)
    np.testing.assert_allclose(_np(out["shifted_proposals"]), shifted, rtol=1e-5, atol=1e-4)
    # Pooling reference: the tested op, with the NumPy offsets; ΔR equal for all bins is the
    # per-bin pooling with that offset in every bin.
    def pool(offsets):
        return _np(multilevel_deformable_roi_pool(PYRAMID, PROPOSALS, offsets.astype("float32"), output_size=k,
                                                  sampling_ratio=2, gamma=0.1, levels=LEVELS))

    pooled_c = pool(class_offsets)
    pooled_r = pool(region_offsets)
    np.testing.assert_allclose(pooled_r, pool(np.broadcast_to(region_offsets[:, :, None, None], (B, R, k, k, 2))),
                               atol=1e-5)
    x = pooled_c.reshape(B, R, -1)  # NHWC flatten
    logits = _dense(_dense(_dense(x, head.cls_fcs[0]), head.cls_fcs[1]), head.tsd_cls_score, relu=False)
    x = pooled_r.reshape(B, R, -1)
    deltas = _dense(_dense(_dense(x, head.reg_fcs[0]), head.reg_fcs[1]), head.tsd_bbox_pred, relu=False)
    np.testing.assert_allclose(_np(out["class_logits"]), logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_np(out["box_deltas"]), deltas.reshape(B, R, n, 4), rtol=1e-4, atol=1e-4)
    # The sibling head on F (training only).
    flat = ROI_FEATURES.reshape(B, R, -1).astype(np.float64)
    y = _dense(_dense(flat, head.sibling.hidden[0]), head.sibling.hidden[1])
    np.testing.assert_allclose(_np(out["sibling_class_logits"]), _dense(y, head.sibling.class_score, relu=False),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_np(out["sibling_box_deltas"]),
                               _dense(y, head.sibling.box_pred, relu=False).reshape(B, R, n, 4), rtol=1e-4, atol=1e-4)


def test_sibling_head_only_in_training():
    head = _head()
    for w in head.sibling.weights:  # a sibling head evaluated at inference would give NaN
        w.assign(np.full(w.shape, np.nan, "float32"))
    inference = head(ROI_FEATURES, PYRAMID, PROPOSALS, LEVELS)
    assert sorted(inference) == ["box_deltas", "class_logits", "class_offsets", "region_offsets", "shifted_proposals"]
    assert all(np.all(np.isfinite(_np(v))) for v in inference.values())
    training = head(ROI_FEATURES, PYRAMID, PROPOSALS, LEVELS, training=True)
    assert np.all(np.isnan(_np(training["sibling_class_logits"])))
    for key in inference:
        np.testing.assert_allclose(_np(training[key]), _np(inference[key]), atol=1e-6)
    sibling = {id(w) for w in head.sibling.weights}
    used = head.inference_weights
    assert len(used) + len(head.sibling.weights) == len(head.weights) and not sibling & {id(w) for w in used}
    assert head.count_inference_params() == head.count_params() - head.sibling.count_params()


def _gradients(head, training):
    """{weight path: d loss / d weight} of the mean square of every float output."""
    def loss_of(outputs):
        return sum(ops.mean(ops.square(v)) for v in outputs.values())

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_of(head(ROI_FEATURES, PYRAMID, PROPOSALS, LEVELS, training=training))
        grads = tape.gradient(loss, head.trainable_weights)
    else:
        import jax

        def fn(values):
            outputs, _ = head.stateless_call(values, [], ROI_FEATURES, PYRAMID, PROPOSALS, LEVELS, training=training)
            return loss_of(outputs)

        grads = jax.grad(fn)([w.value for w in head.trainable_weights])
    return {w.path: None if g is None else _np(g) for w, g in zip(head.trainable_weights, grads)}


def test_gradient_paths():
    head = _head()
    _randomise(head, np.random.default_rng(2), 0.2)
    trained = _gradients(head, training=True)
    for path, grad in trained.items():  # every weight learns in training, the offset nets included
        assert grad is not None and np.all(np.isfinite(grad)) and np.any(grad != 0), path
    inference = _gradients(head, training=False)
    for w in head.sibling.trainable_weights:
        assert inference[w.path] is None or not np.any(inference[w.path]), w.path


def test_initialisation():
    head = TSDHead(63, hidden_units=256, offset_units=128, output_size=7)
    head.build((None, 4, 7, 7, 16), [(None, 16, 16, 16)], (None, 4, 4))
    for layer in (head.shared_fc, head.delta_c_fc, head.delta_c, head.delta_r_fc, head.delta_r, *head.cls_fcs,
                  *head.reg_fcs):
        kernel, fan_in = _np(layer.kernel), layer.kernel.shape[0]
        assert abs(kernel.std() - 1 / math.sqrt(fan_in)) < 0.1 / math.sqrt(fan_in), layer.name  # not zero-init
        np.testing.assert_array_equal(_np(layer.bias), 0.0)
    for a, b in ((head.cls_fcs[0], head.reg_fcs[0]), (head.cls_fcs[1], head.reg_fcs[1]),
                 (head.delta_c_fc, head.delta_r_fc)):  # layers of one shape start from different values
        assert not np.array_equal(_np(a.kernel), _np(b.kernel)), (a.name, b.name)
    limit = 1 / math.sqrt(256)  # PyTorch's default Linear init, U(±1/sqrt(fan_in)) for weight and bias
    for layer in (head.tsd_cls_score, head.tsd_bbox_pred):  # 64 and 256 outputs
        for w, accuracy in ((_np(layer.kernel), 0.05), (_np(layer.bias), 0.25)):
            assert np.abs(w).max() <= limit, layer.name
            assert abs(w.std() / (limit / math.sqrt(3)) - 1) < accuracy, layer.name
    sigmoid = TSDHead(3, classification_loss="sigmoid", hidden_units=8, offset_units=4, output_size=2)
    sigmoid.build((None, 4, 2, 2, 4), [(None, 16, 16, 4)], (None, 4, 4))
    assert sigmoid.num_outputs == 3 and sigmoid.sibling.num_outputs == 3
    np.testing.assert_allclose(_np(sigmoid.tsd_cls_score.bias), -math.log(999.0), rtol=1e-6)
    np.testing.assert_allclose(_np(sigmoid.sibling.class_score.bias), -math.log(999.0), rtol=1e-6)


def test_config_compiled_call_and_keras_round_trip():
    head = _head(classification_loss="eqlv2", gamma=0.2, min_level=2, prior_probability=0.01)
    config = head.get_config()
    assert {k: config[k] for k in SMALL} == SMALL
    assert (config["classification_loss"], config["gamma"], config["prior_probability"]) == ("eqlv2", 0.2, 0.01)
    revived = TSDHead.from_config(config)
    assert revived.get_config() == config
    assert type(keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(head))) is TSDHead

    expected = head(ROI_FEATURES, PYRAMID, PROPOSALS, LEVELS)

    def call(roi, p2, p3, proposals, levels):
        return head(roi, [p2, p3], proposals, levels)

    compiled = run_compiled(call, ROI_FEATURES, *PYRAMID, PROPOSALS, LEVELS)  # XLA / jax.jit
    for key, value in expected.items():
        np.testing.assert_allclose(compiled[key], _np(value), rtol=1e-4, atol=1e-4, err_msg=key)

    inputs = [keras.Input(ROI_FEATURES.shape[1:]), [keras.Input(p.shape[1:]) for p in PYRAMID],
              keras.Input(PROPOSALS.shape[1:]), keras.Input(LEVELS.shape[1:], dtype="int32")]
    symbolic = head(*inputs)
    assert {k: tuple(v.shape[1:]) for k, v in symbolic.items()} == {
        k: tuple(v.shape[1:]) for k, v in expected.items()}
    model = keras.Model(inputs, symbolic)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "tsd.keras")
        model.save(path)
        restored = keras.saving.load_model(path, safe_mode=True)
    outputs = restored.predict([ROI_FEATURES, PYRAMID, PROPOSALS, LEVELS], verbose=0)
    for key, value in expected.items():
        np.testing.assert_allclose(outputs[key], _np(value), rtol=1e-5, atol=1e-5, err_msg=key)
    assert len(restored.layers[-1].weights) == len(head.weights)  # the sibling head's weights are saved too


@pytest.mark.parametrize("policy, tolerance", [("mixed_float16", 1e-2), ("mixed_bfloat16", 5e-2)])
def test_mixed_precision(policy, tolerance):
    head = _head()
    reference = head(ROI_FEATURES, PYRAMID, PROPOSALS, LEVELS, training=True)
    low = TSDHead(**SMALL, dtype=policy)
    low.build(ROI_FEATURES.shape, [p.shape for p in PYRAMID], PROPOSALS.shape, LEVELS.shape)
    low.set_weights(head.get_weights())
    assert all(w.dtype == "float32" for w in low.weights)
    out = low(ROI_FEATURES, PYRAMID, PROPOSALS, LEVELS, training=True)
    symbolic = low(keras.Input(ROI_FEATURES.shape[1:]), [keras.Input(p.shape[1:]) for p in PYRAMID],
                   keras.Input(PROPOSALS.shape[1:]), keras.Input(LEVELS.shape[1:], dtype="int32"), training=True)
    for key, value in out.items():
        dtype = "float32" if key in ("class_offsets", "region_offsets", "shifted_proposals") else low.compute_dtype
        assert keras.backend.standardize_dtype(value.dtype) == dtype, key
        assert symbolic[key].dtype == dtype, key
        high = _np(reference[key])
        np.testing.assert_allclose(_np(ops.cast(value, "float32")), high, rtol=tolerance,
                                   atol=tolerance * max(1.0, np.abs(high).max()), err_msg=key)


def test_arguments_validated():
    for kwargs, name in ((dict(classification_loss="focal"), "classification_loss"), (dict(gamma=0.0), "gamma"),
                         (dict(offset_units=0), "offset_units"), (dict(output_size=0), "output_size"),
                         (dict(min_level=-1), "min_level"), (dict(prior_probability=1.0), "prior_probability")):
        with pytest.raises(ValueError, match=name):
            TSDHead(3, **kwargs)
    head = TSDHead(**SMALL)
    with pytest.raises(ValueError, match="channels"):
        head.build(ROI_FEATURES.shape, [(B, 32, 32, 4), (B, 16, 16, 8)], PROPOSALS.shape)
    with pytest.raises(ValueError, match="proposals"):
        head.build(ROI_FEATURES.shape, [p.shape for p in PYRAMID], (B, R, 5))
    with pytest.raises(ValueError, match="roi_features"):
        head.build((B, R, 36), [p.shape for p in PYRAMID], PROPOSALS.shape)


def test_sibling_head_is_the_box_head():
    head = _head(classification_loss="eql")
    assert isinstance(head.sibling, SiblingBoxHead)
    assert (head.sibling.classification_loss, head.sibling.hidden_units, head.sibling.num_hidden) == ("eql", 16, 2)
