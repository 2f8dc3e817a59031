"""Tests for keras_cvx.models.pointins.PointINS on tiny configurations (64x64 input, the
Functional backbone of the CondInst tests, 8-channel FPN, one conv per tower, a 4-channel
template, an 8-channel mask head), on FCOS and on RetinaNet: the loss terms against a NumPy
PointINS loss (the detector's terms; the mask term from dense Keras convolutions of the box
tower read at the sampled points, the template reshape and product in NumPy, a NumPy mask head,
NumPy RoIAlign crops of the ground-truth masks and the BCE), ``predict_step`` (NumPy masks of
the kept detections pasted into their boxes), the counts of the inferred defaults, the config
and ``.keras`` round trip, the Trainer under XLA and under MirroredStrategy on 2 logical CPUs
against a hand-written step, and SavedModel export."""

import json

import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.heads.fcos import FCOSHead
from keras_cvx.heads.pointins import PointINSMaskHead
from keras_cvx.heads.retinanet import RetinaNetHead
from keras_cvx.layers.fcos_decoder import FCOSDecoder
from keras_cvx.layers.instance_aware_conv import InstanceAwareConv
from keras_cvx.layers.retinanet_decoder import RetinaNetDecoder
from keras_cvx.models import pointins as pointins_module
from keras_cvx.models.necks.fpn import FeaturePyramid
from keras_cvx.models.pointins import PointINS
from tests.heads.test_pointins import numpy_head
from tests.layers.test_instance_aware_conv import _dense_per_location
from tests.losses.test_focal import numpy_focal
from tests.models.instance_export import check_export_of_full_image_masks
from tests.models.label_encoders.test_retinanet import numpy_retinanet_targets
from tests.models.test_condinst import NUM_CLASSES, SIZE, numpy_fcos_loss, numpy_matched_gt, run, tiny_backbone
from tests.models.test_condinst import tiny_data as ellipse_data
from tests.models.trainer_steps import run_and_check
from tests.ops.test_masks import numpy_crop_averages, numpy_paste

MAX_PROPOSALS = 128


def tiny_model(seed=0, max_detections=10, detector="fcos", **kwargs):
    """A PointINS of 64x64 inputs (86 FCOS locations, or 774 RetinaNet anchors); class logits
    biased to 0 so that untrained detections pass the 0.05 threshold, FCOS box distances of about
    one stride, a RetinaNet box tower of unit scale, and larger instance-conv
    and mask-predictor weights so that the untrained masks are not all near probability 0.5."""
    keras.utils.set_random_seed(seed)
    kwargs.setdefault("backbone", tiny_backbone())
    fcos = detector == "fcos"
    head = (FCOSHead(NUM_CLASSES, num_convs=1, groups=4, return_box_features=True) if fcos
            else RetinaNetHead(NUM_CLASSES, 9, num_convs=1, return_box_features=True))
    decoder = FCOSDecoder(max_detections=max_detections) if fcos else RetinaNetDecoder(max_detections=max_detections)
    model = PointINS(NUM_CLASSES, image_size=SIZE, detector=detector, neck=FeaturePyramid(8), head=head,
                     instance_conv=InstanceAwareConv(template_channels=4, num_weight_sets=1 if fcos else 9),
                     mask_head=PointINSMaskHead(channels=8, num_convs=1), decoder=decoder,
                     max_proposals=MAX_PROPOSALS, seed=seed, **kwargs)
    rng = np.random.default_rng(seed)
    model.head.class_conv.bias.assign(np.zeros(model.head.class_conv.bias.shape, "float32"))
    if fcos:  # boxes of about 2 x 2 strides rather than points
        model.head.box_conv.bias.assign(np.ones(4, "float32"))
    else:  # a box tower of unit scale (RetinaNet's has no normalisation: N(0, 0.01) gives ~1e-3)
        for conv in model.head.box_subnet:
            conv.kernel.assign(rng.normal(0, 0.5, conv.kernel.shape).astype("float32"))
    conv = model.instance_conv
    for weight in (conv.template_kernel, conv.weights_kernel, model.mask_head.predictor.kernel):
        weight.assign(rng.normal(0, 0.3, weight.shape).astype("float32"))
    return model


def tiny_data(batch=2, seed=0):
    """CondInst's test data with the masks made different in their boxes' frame (PointINS's
    targets are masks cropped to their box): instance 0 keeps its ellipse, instance 1 only its
    left half, instance 2 only its top half."""
    images, y = ellipse_data(batch, seed)
    cells = (np.arange(SIZE // 4) * 4.0 + 2.0)  # stride-4 cell centres
    for b in range(batch):
        x1, y1, x2, y2 = y["boxes"][b, 1]
        y["masks"][b, 1] *= (cells[None, :] < (x1 + x2) / 2).astype("uint8")
        x1, y1, x2, y2 = y["boxes"][b, 2]
        y["masks"][b, 2] *= (cells[:, None] < (y1 + y2) / 2).astype("uint8")
    return images, y


@pytest.fixture(scope="module")
def fcos_model():
    return tiny_model(detector="fcos")


@pytest.fixture(scope="module")
def retinanet_model():
    return tiny_model(detector="retinanet")


# ---------------------------------------------------------------- NumPy PointINS

def numpy_mask_logits(model, out, images, predictions):
    """28x28 logits of potential instances: dense Keras convs of the box tower (template and
    weights), read at the points, template depth-to-space (q = (u k + v) C + c), depthwise
    product, NumPy mask head."""
    conv = model.instance_conv
    k, c, a = conv.template_size, conv.template_channels, model.num_weight_sets
    values = lambda w: np.asarray(ops.convert_to_numpy(w))  # noqa: E731
    templates = _dense_per_location(out["box_features"], values(conv.template_kernel), values(conv.template_bias))
    weights = _dense_per_location(out["box_features"], values(conv.weights_kernel), values(conv.weights_bias))
    points, sets = predictions // a, predictions % a
    template = templates[images, points].reshape(-1, k, k, c)
    weight = weights[images, points].reshape(-1, a, c)[np.arange(len(points)), sets]
    head = model.mask_head
    return numpy_head(template * weight[:, None, None, :], [values(w) for w in head.weights], head.resize,
                      head.num_convs)


def numpy_mask_loss(model, y, out, images, predictions, matched):
    """Mean over the instances of the mean per-pixel BCE against the ground-truth mask cropped
    to its box (RoIAlign 28x28, sampling 2, >= 0.5)."""
    logits = numpy_mask_logits(model, out, images, predictions)
    averages = numpy_crop_averages(y["masks"][images, matched], y["boxes"][images, matched], model.mask_stride,
                                   logits.shape[-1], 2)
    targets = (averages >= 0.5).astype(np.float64)
    bce = np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))
    return bce.mean(axis=(1, 2)).mean(), np.abs(averages - 0.5) > 1e-5


def numpy_retinanet_loss(model, y, out, beta=0.1):
    anchors = np.asarray(model.anchors, np.float64)
    labels, matched, box_targets = zip(*(numpy_retinanet_targets(y["boxes"][b].astype(np.float64), y["labels"][b],
                                                                 anchors) for b in range(len(y["labels"]))))
    labels, matched, box_targets = np.stack(labels), np.stack(matched), np.stack(box_targets)
    positive = labels >= 0
    num_pos = max(positive.sum(), 1)
    one_hot = np.zeros(out["class_logits"].shape)
    b_idx, n_idx = np.nonzero(positive)
    one_hot[b_idx, n_idx, labels[positive]] = 1
    counted = labels >= -1
    terms = {"loss_cls": (numpy_focal(one_hot, out["class_logits"]).sum(-1) * counted).sum() / num_pos}
    d = np.abs(out["box_regression"].astype(np.float64) - box_targets)[positive]
    terms["loss_box"] = np.where(d < beta, 0.5 * d**2 / beta, d - 0.5 * beta).sum() / num_pos
    return terms, b_idx, n_idx, matched[b_idx, n_idx]


@pytest.mark.parametrize("detector", ["fcos", "retinanet"])
def test_loss_terms_match_numpy(detector, fcos_model, retinanet_model):
    model = fcos_model if detector == "fcos" else retinanet_model
    images, y = tiny_data(batch=2, seed=1)
    empty = {"boxes": np.zeros((2, 3, 4), "float32"), "labels": np.full((2, 3), -1, "int32"),
             "masks": np.zeros((2, 3, 16, 16), "uint8")}

    def loss(images, y, empty):
        out = model(images, training=True)
        return out, model.loss_terms(y, out), model.loss_terms(empty, out)

    out, terms, empty_terms = run(loss, images, y, empty)
    if detector == "fcos":
        expected, b_idx, n_idx, box_targets = numpy_fcos_loss(model, y, out)
        matched = numpy_matched_gt(model, y, box_targets, b_idx, n_idx)
    else:
        expected, b_idx, n_idx, matched = numpy_retinanet_loss(model, y, out)
    assert 0 < len(b_idx) <= model.max_proposals  # every positive is a mask instance
    expected["loss_mask"], decided = numpy_mask_loss(model, y, out, b_idx, n_idx, matched)
    assert decided.mean() > 0.99  # crops whose bins average exactly 0.5 may round either way
    assert sorted(terms) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(terms[key], value, rtol=1e-4, err_msg=key)
    # no ground truth at all: finite, and only the classification term is not 0
    assert all(np.isfinite(list(empty_terms.values())))
    assert empty_terms["loss_cls"] > 0 and all(v == 0.0 for k, v in empty_terms.items() if k != "loss_cls")


def test_mask_loss_is_the_mean_over_the_sampled_instances(fcos_model, monkeypatch):
    """Three sampled slots (two valid) -> the mean of those two instances' BCE, not of all."""
    model = fcos_model
    images, y = tiny_data(batch=2, seed=1)
    out = run(lambda x: model(x, training=True), images)
    _, b_idx, n_idx, box_targets = numpy_fcos_loss(model, y, out)
    matched = numpy_matched_gt(model, y, box_targets, b_idx, n_idx)
    pick = [0, len(b_idx) - 1]
    index = np.array([b_idx[i] * model.num_predictions + n_idx[i] for i in pick] + [5], "int32")
    valid = np.array([True, True, False])
    monkeypatch.setattr(pointins_module, "sample_subset", lambda positive, count, seed: (index, valid))
    terms = run(lambda x: model.loss_terms(y, model(x, training=True)), images)
    expected, _ = numpy_mask_loss(model, y, out, b_idx[pick], n_idx[pick], matched[pick])
    np.testing.assert_allclose(terms["loss_mask"], expected, rtol=1e-4)


@pytest.mark.parametrize("detector", ["fcos", "retinanet"])
def test_predict_step_contract_and_masks_match_numpy(detector, fcos_model, retinanet_model):
    model = fcos_model if detector == "fcos" else retinanet_model
    images, _ = tiny_data(batch=2, seed=2)

    def predict(images):
        raw = model(images, training=False)
        return model.predict_step(images), raw, model.detections(raw)

    out, raw, decoded = run(predict, images)
    assert {k: v.shape for k, v in out.items()} == {"boxes": (2, 10, 4), "scores": (2, 10), "classes": (2, 10),
                                                    "num_detections": (2,), "masks": (2, 10, SIZE, SIZE)}
    assert out["masks"].dtype == np.uint8 and set(np.unique(out["masks"])) <= {0, 1}
    np.testing.assert_allclose(out["boxes"], np.clip(decoded["boxes"], 0, SIZE), atol=1e-5)
    np.testing.assert_array_equal(out["classes"], decoded["classes"])
    for b in range(2):
        n = out["num_detections"][b]
        assert n > 0 and np.all(out["masks"][b, n:] == 0) and np.all(out["classes"][b, n:] == -1)
        logits = numpy_mask_logits(model, raw, np.full(n, b), decoded["predictions"][b, :n])
        probabilities = numpy_paste((1 / (1 + np.exp(-logits)))[None], out["boxes"][b, :n][None], SIZE, SIZE)[0]
        margin = np.abs(probabilities - 0.5) > 1e-4  # away from the threshold
        np.testing.assert_array_equal(out["masks"][b, :n][margin], (probabilities > 0.5)[margin])
        assert 0 < (probabilities > 0.5).mean() < 1  # masks neither empty nor full


@pytest.mark.single_backend  # full-size models: building them is slow under JAX, counts are backend-free
def test_counts_of_the_inferred_defaults():
    """arXiv 2003.06148 as specified (inferred sizes; C_in 256, k 3, C 256, 80 classes)."""
    fcos = PointINS(80, image_size=128)
    retinanet = PointINS(80, image_size=128, detector="retinanet")
    assert 256 * 2304 * 9 + 2304 == 5_310_720 and 256 * 256 * 9 + 256 == 590_080
    assert fcos.instance_conv.count_params() == 5_310_720 + 590_080  # template + FCOS weights (A = 1)
    assert retinanet.instance_conv.count_params() == 5_310_720 + 5_310_720  # template + RetinaNet weights (A = 9)
    assert fcos.mask_head.count_params() == retinanet.mask_head.count_params() == 2_622_977
    assert fcos.neck.count_params() == 3_868_672 and fcos.head.count_params() == 4_920_666
    retinanet_head = 2 * 4 * (256 * 256 * 9 + 256) + (256 * 9 * 720 + 720) + (256 * 9 * 36 + 36)
    assert retinanet.head.count_params() == retinanet_head == 6_463_220
    backbone = fcos.backbone.count_params()
    assert fcos.count_params() == backbone + 3_868_672 + 4_920_666 + 5_900_800 + 2_622_977
    assert retinanet.count_params() == backbone + 3_868_672 + 6_463_220 + 10_621_440 + 2_622_977
    assert (fcos.num_weight_sets, retinanet.num_weight_sets) == (1, 9)
    assert retinanet.num_predictions == 9 * fcos.num_predictions
    assert retinanet.label_encoder.positive_threshold == 0.5 and retinanet.label_encoder.negative_threshold == 0.4
    assert (fcos.decoder.iou_threshold, retinanet.decoder.iou_threshold) == (0.6, 0.5)
    assert abs(float(ops.convert_to_numpy(retinanet.head.class_conv.bias)[0]) + 4.59512) < 1e-4


@pytest.mark.single_backend
def test_config_and_keras_round_trip(tmp_path):
    model = tiny_model(max_detections=6, detector="retinanet", mask_threshold=0.4, pixel_mean=(1.0, 2.0, 3.0))
    config = model.get_config()
    for key in ("num_classes", "image_size", "backbone", "width_multiplier", "detector", "neck", "head",
                "instance_conv", "mask_head", "anchor_generator", "label_encoder", "decoder", "max_proposals",
                "mask_stride", "mask_loss_weight", "box_loss_beta", "mask_threshold", "pixel_mean", "seed"):
        assert key in config, key
    json.dumps(config)
    assert PointINS.from_config(config).get_config() == config
    images, _ = tiny_data(batch=2, seed=3)
    path = str(tmp_path / "pointins.keras")
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(restored, PointINS) and restored.detector == "retinanet" and restored.mask_threshold == 0.4
    for a, b in zip(restored.weights, model.weights, strict=True):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b), err_msg=b.path)
    expected, got = run(model.predict_step, images), run(restored.predict_step, images)
    assert expected["num_detections"].min() > 0 and expected["masks"].any()
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-5, err_msg=key)


@pytest.mark.single_backend
def test_argument_errors_name_the_argument():
    base = dict(backbone=tiny_backbone(), image_size=64)
    for kwargs, name in [({"detector": "ssd"}, "detector"), ({"max_proposals": 0}, "max_proposals"),
                         ({"mask_stride": 3}, "mask_stride"), ({"mask_threshold": 1.0}, "mask_threshold"),
                         ({"mask_loss_weight": 0}, "mask_loss_weight"), ({"image_size": 48}, "image_size"),
                         ({"head": RetinaNetHead(NUM_CLASSES, return_box_features=True)}, "head"),
                         ({"detector": "retinanet", "head": RetinaNetHead(NUM_CLASSES, 4, return_box_features=True)},
                          "head"),
                         ({"instance_conv": InstanceAwareConv(num_weight_sets=9)}, "instance_conv")]:
        with pytest.raises(ValueError, match=name):
            PointINS(NUM_CLASSES, **{**base, **kwargs})
    model = tiny_model()
    with pytest.raises(ValueError, match="masks"):
        model.loss_terms({"boxes": np.zeros((1, 1, 4)), "labels": np.zeros((1, 1), "int32"),
                          "masks": np.zeros((1, 1, 32, 32))}, model(np.zeros((1, SIZE, SIZE, 3), "float32")))


# ---------------------------------------------------------------- TensorFlow: Trainer, distribution, export

@pytest.mark.tensorflow_only
def test_trainer_step_under_xla_and_mirrored_equals_hand_written_step(tmp_path):
    """``tests/models/trainer_steps.py`` in a fresh process (2 logical CPUs): one Trainer step
    with XLA on batch A, and one under MirroredStrategy on [A, A], against an eager
    GradientTape SGD step on A."""
    result = run_and_check(tmp_path, "tests.models.test_pointins")
    assert 0 < result["positives"] <= MAX_PROPOSALS
    assert all(path.startswith("fcos_head/scale") for path in result["unmoved"]), result["unmoved"]


@pytest.mark.tensorflow_only
def test_export_reload_same_boxes_and_masks_at_the_original_size(fcos_model, tmp_path):
    check_export_of_full_image_masks(fcos_model, tmp_path, SIZE)
