"""Tests for keras_cvx.models.ssd_net.SSDNet: shapes and parameter counts of SSD300 / SSD-NET300
(build only), priors, the target assignment and loss against a NumPy SSD, training steps
(fit, XLA, mixed_bfloat16, MirroredStrategy), decoding, .keras round trip and SavedModel export.

Most tests use a tiny Functional backbone at 64×64 (maps 16, 8, 4, 2, 1: conv3_3's stand-in
and four levels; 372 priors from the derived SSD rule)."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.layers.ssd_decoder import SSDDecoder
from keras_cvx.models.anchor_generators.ssd import SSDAnchorGenerator
from keras_cvx.models.label_encoders.ssd import SSDLabelEncoder
from keras_cvx.models.ssd_net import SSDNet
from keras_cvx.ops.anchors import ssd_anchors

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = 64
NUM_CLASSES = 3


def tiny_backbone(width=8):
    """64×64 -> a dict of maps 16 ("c"), 8, 4, 2, 1 ("l1".."l4")."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu")(inputs / 64.0)
    outputs = {}
    for name in ("c", "l1", "l2", "l3", "l4"):
        x = keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu")(x)
        outputs[name] = x
    return keras.Model(inputs, outputs, name="tiny_backbone")


def tiny_model(net_modules=True, seed=0, **kwargs):
    """SSD-NET on ``tiny_backbone``; 10 detections (eager TensorFlow runs NMS slot by slot)."""
    keras.utils.set_random_seed(seed)
    kwargs.setdefault("decoder", SSDDecoder(max_detections=10))
    model = SSDNet(NUM_CLASSES, image_size=SIZE, backbone=tiny_backbone(), net_modules=net_modules,
                   fusion_channels=8, **kwargs)
    assert model.built
    return model


def tiny_data(batch=2, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (batch, SIZE, SIZE, 3)).astype("float32")
    boxes = np.zeros((batch, 4, 4), "float32")
    labels = np.full((batch, 4), -1, "int32")
    for b in range(batch):
        for m in range(1 + b % 3):
            w, h = rng.uniform(6, 56, 2)
            x1, y1 = rng.uniform(0, SIZE - w), rng.uniform(0, SIZE - h)
            boxes[b, m] = [x1, y1, x1 + w, y1 + h]
            labels[b, m] = rng.integers(0, NUM_CLASSES)
    return images, {"boxes": boxes, "labels": labels}


def to_numpy(structure):
    return {k: np.asarray(ops.convert_to_numpy(v)) for k, v in structure.items()}


# ---------------------------------------------------------------- NumPy SSD reference

def numpy_iou(a, b):
    """[M, 4] x [N, 4] -> [M, N]."""
    w = np.maximum(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0)
    h = np.maximum(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None] - w * h
    return np.where(union > 0, w * h / np.where(union > 0, union, 1), 0)


def numpy_ssd_targets(boxes, labels, priors, threshold=0.5):
    """ssd.pytorch's ``match``: best prior of each ground truth forced (later ground truth wins),
    then IoU >= threshold; variances 0.1/0.2 encoding."""
    box_targets = np.zeros((len(boxes), len(priors), 4))
    class_targets = np.zeros((len(boxes), len(priors)), np.int64)
    pw, ph = priors[:, 2] - priors[:, 0], priors[:, 3] - priors[:, 1]
    pcx, pcy = priors[:, 0] + pw / 2, priors[:, 1] + ph / 2
    for b in range(len(boxes)):
        valid = labels[b] >= 0
        gt, gl = boxes[b][valid], labels[b][valid]
        if not len(gt):
            continue
        iou = numpy_iou(gt, priors)
        best_gt, best_iou = iou.argmax(0), iou.max(0)
        for j in range(len(gt)):
            best_gt[iou[j].argmax()] = j
            best_iou[iou[j].argmax()] = 2.0
        positive = best_iou >= threshold
        g = gt[best_gt]
        gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
        t = np.stack([(g[:, 0] + gw / 2 - pcx) / (0.1 * pw), (g[:, 1] + gh / 2 - pcy) / (0.1 * ph),
                      np.log(gw / pw) / 0.2, np.log(gh / ph) / 0.2], -1)
        box_targets[b] = np.where(positive[:, None], t, 0)
        class_targets[b] = np.where(positive, gl[best_gt] + 1, 0)
    return box_targets, class_targets


def numpy_multibox(box_targets, class_targets, deltas, logits, ratio=3):
    """SSD MultiBox loss with per-image 3:1 hard negative mining, normalised by the batch's positives."""
    total, positives = 0.0, 0
    for b in range(len(logits)):
        z = logits[b] - logits[b].max(-1, keepdims=True)
        log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
        pos = class_targets[b] > 0
        ce = -log_probs[np.arange(len(z)), class_targets[b]]
        background = -log_probs[:, 0]
        num_neg = min(ratio * pos.sum(), len(z) - 1)
        candidates = np.flatnonzero(~pos)
        negatives = candidates[np.argsort(-background[candidates], kind="stable")[:num_neg]]
        d = np.abs(deltas[b][pos] - box_targets[b][pos])
        smooth = np.where(d < 1, 0.5 * d * d, d - 0.5).sum()
        total += ce[pos].sum() + ce[negatives].sum() + smooth
        positives += pos.sum()
    return total / max(positives, 1)


# ---------------------------------------------------------------- full-size models (build only)
# single_backend (TensorFlow): under JAX, initialising tens of millions of parameters compiles one random op
# per weight shape (~25 s per model here); these tests check shapes and counts, which do not
# depend on the backend, and the tiny-model tests below run the same code under JAX.

@pytest.mark.single_backend
def test_ssd300_vgg16_shapes_and_parameter_counts():
    """Plain SSD300 (VOC, 20 classes) has the reference 26,285,486 parameters; SSD-NET300 adds
    NNFM, NEM and NTM parameters and changes the heads of levels 1-4 to 256 input channels."""
    plain = SSDNet(20, 300, net_modules=False)
    net = SSDNet(20, 300)
    images = keras.Input((300, 300, 3), batch_size=2)
    for model in (plain, net):
        out = model(images)  # symbolic: no 300x300 computation
        assert tuple(out["box_regression"].shape) == (2, 8732, 4)
        assert tuple(out["class_logits"].shape) == (2, 8732, 21)
        assert model.compute_output_shape((2, 300, 300, 3)) == {"box_regression": (2, 8732, 4),
                                                                "class_logits": (2, 8732, 21)}
    assert plain.count_params() == 26_285_486
    assert [s[1:] for s in net._level_shapes] == [(38, 38, 512), (19, 19, 1024), (10, 10, 512), (5, 5, 256),
                                                  (3, 3, 256), (1, 1, 256)]
    channels = [256, 512, 1024, 512, 256, 256]  # conv3_3, p1..p5
    fusion = {f"nnfm{s}": 256 * (channels[s - 1] + channels[s] + channels[s + 1] + 1) for s in range(1, 5)}
    assert fusion == {"nnfm1": 459_008, "nnfm2": 524_544, "nnfm3": 459_008, "nnfm4": 262_400}
    erasing = {"nem1_3": 256 + 1, "nem2_4": 256 + 1}
    transfer = {"ntm1_3": 9 * 256 * 256 + 256, "ntm2_4": 9 * 256 * 256 + 256}
    modules = {layer.name: layer.count_params() for layer in net.fusions + net.erasers + net.transfers}
    assert modules == {**fusion, **erasing, **transfer}
    anchors, outputs = (4, 6, 6, 6), 4 + 21
    head_change = sum(9 * (256 - c) * a * outputs for c, a in zip(channels[1:5], anchors))
    assert head_change == -1_612_800
    assert sum(modules.values()) == 2_885_634
    assert net.count_params() == 26_285_486 + sum(modules.values()) + head_change == 27_558_320


@pytest.mark.single_backend
@pytest.mark.parametrize("image_size, levels, count", [(300, [38, 19, 10, 5, 3, 1], 8732),
                                                         (512, [64, 32, 16, 8, 4, 2, 1], 24564)])
def test_vgg16_anchors_are_ssd_coco_anchors(image_size, levels, count):
    model = SSDNet(80, image_size, width_multiplier=0.125, fusion_channels=8)
    assert [s[1] for s in model._level_shapes] == levels
    assert model.num_anchors == count
    np.testing.assert_array_equal(model.anchors, ops.convert_to_numpy(ssd_anchors(image_size)))
    model = SSDNet(80, image_size, width_multiplier=0.125, anchor_generator=SSDAnchorGenerator(clip=True),
                   net_modules=False)
    np.testing.assert_array_equal(model.anchors, ops.convert_to_numpy(ssd_anchors(image_size, clip=True)))
    revived = SSDNet.from_config(model.get_config())  # the backbone is rebuilt from its config
    assert revived.get_config() == model.get_config() and revived.count_params() == model.count_params()


@pytest.mark.single_backend
@pytest.mark.parametrize("image_size, levels, count", [(300, [38, 19, 10, 5, 3, 1], 8732),
                                                         (512, [64, 32, 16, 8, 4, 2, 1], 24564),
                                                         (160, [20, 10, 5, 3, 1], 2390)])
def test_resnet_pyramid_with_ssd_extras(image_size, levels, count):
    """C3, C4, C5 + SSD extra blocks give SSD's feature sizes at 300/512 (and halve to 1x1 elsewhere)."""
    model = SSDNet(5, image_size, backbone="resnet10", width_multiplier=0.125, fusion_channels=8)
    assert [s[1] for s in model._level_shapes] == levels
    assert model._shallow_shape[1] == -(-image_size // 4)  # C2
    assert model.num_anchors == count
    out = model(keras.Input((image_size, image_size, 3)))
    assert tuple(out["class_logits"].shape) == (None, count, 6)


@pytest.mark.single_backend
def test_resnet50_ssd300_output_shapes():
    model = SSDNet(80, 300, backbone="resnet50")
    assert [s[1:] for s in model._level_shapes] == [(38, 38, 512), (19, 19, 1024), (10, 10, 2048), (5, 5, 256),
                                                    (3, 3, 256), (1, 1, 256)]
    out = model(keras.Input((300, 300, 3)))
    assert tuple(out["box_regression"].shape) == (None, 8732, 4)
    assert tuple(out["class_logits"].shape) == (None, 8732, 81)


def test_derived_anchors_for_other_sizes():
    """4 levels at 64: scales 0.1, 0.2, 0.55, 0.9, 1.25 of 64; steps 64 / f; ratios (2), (2, 3), (2), (2)."""
    model = tiny_model()
    settings = model.anchor_generator.settings(SIZE, model.feature_sizes)
    assert settings["feature_sizes"] == (8, 4, 2, 1)
    np.testing.assert_allclose(settings["steps"], [8, 16, 32, 64])
    np.testing.assert_allclose(settings["min_sizes"], [6.4, 12.8, 35.2, 57.6])
    np.testing.assert_allclose(settings["max_sizes"], [12.8, 35.2, 57.6, 80.0])
    assert settings["aspect_ratios"] == ((2,), (2, 3), (2,), (2,))
    assert model.head.anchors_per_location == (4, 6, 4, 4)
    assert model.num_anchors == 64 * 4 + 16 * 6 + 4 * 4 + 4 == 372
    # first anchor: centre (4, 4), size 6.4
    np.testing.assert_allclose(model.anchors[0], [0.8, 0.8, 7.2, 7.2], atol=1e-5)


def test_argument_checks():
    for kwargs, name in [({"backbone": "vgg19"}, "backbone"), ({"num_classes": 0}, "num_classes"),
                         ({"nem_gate": "avg"}, "nem_gate"), ({"ntm_pool": "sum"}, "ntm_pool"),
                         ({"pixel_mean": (1, 2)}, "pixel_mean"), ({"width_multiplier": 0}, "width_multiplier"),
                         ({"label_encoder": 3}, "label_encoder")]:
        with pytest.raises(ValueError, match=name):
            SSDNet(**{"num_classes": 3, **kwargs})
    with pytest.raises(ValueError, match="netm_pairs"):
        SSDNet(3, SIZE, backbone=tiny_backbone(), netm_pairs=((3, 5),))
    with pytest.raises(ValueError, match="fusion_levels"):
        SSDNet(3, SIZE, backbone=tiny_backbone(), fusion_levels=5)
    inputs = keras.Input((SIZE, SIZE, 3))
    single = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
    with pytest.raises(ValueError, match="backbone"):
        SSDNet(3, SIZE, backbone=single)


# ---------------------------------------------------------------- tiny model

@pytest.mark.single_backend
def test_net_modules_wiring_matches_manual_composition():
    """SSD-NET features = heads' inputs built by hand from the backbone maps with the model's
    own NNFM/NEM/NTM layers (gates from q3/q4 before the transfers)."""
    model = tiny_model()
    images, _ = tiny_data()
    maps = model.backbone(images - np.array([123.0, 117.0, 104.0], "float32"))
    c, p = maps["c"], [maps[k] for k in ("l1", "l2", "l3", "l4")]
    nnfm = model.fusions
    q = [nnfm[0](p[0], shallower=c, deeper=p[1]), nnfm[1](p[1], shallower=p[0], deeper=p[2]),
         nnfm[2](p[2], shallower=p[1], deeper=p[3]), nnfm[3](p[3], shallower=p[2])]
    kept1, erased1 = model.erasers[0](q[0], q[2])
    kept2, erased2 = model.erasers[1](q[1], q[3])
    expected = [kept1, kept2, model.transfers[0](erased1, q[2]), model.transfers[1](erased2, q[3])]
    for got, want in zip(model.features(images), expected):
        np.testing.assert_allclose(ops.convert_to_numpy(got), ops.convert_to_numpy(want), rtol=1e-5, atol=1e-5)
    plain = tiny_model(net_modules=False)
    assert not plain.fusions and not plain.erasers and not plain.transfers
    assert [tuple(f.shape) for f in plain.features(images)] == [(2, 8, 8, 8), (2, 4, 4, 8), (2, 2, 2, 8), (2, 1, 1, 8)]


@pytest.mark.single_backend
def test_targets_and_loss_match_numpy_ssd():
    model = tiny_model()
    images, targets = tiny_data(batch=3, seed=1)
    y_pred = model(images)
    assigned = to_numpy(model.assign_targets(targets["boxes"], targets["labels"]))
    box_t, class_t = numpy_ssd_targets(targets["boxes"].astype(np.float64), targets["labels"],
                                       model.anchors.astype(np.float64))
    np.testing.assert_array_equal(assigned["class_targets"], class_t)
    np.testing.assert_allclose(assigned["box_targets"], box_t, rtol=1e-4, atol=1e-4)
    assert (class_t > 0).sum() >= 6  # every ground truth has at least its forced anchor
    loss = float(ops.convert_to_numpy(model.compute_loss(images, targets, y_pred)))
    pred = to_numpy(y_pred)
    expected = numpy_multibox(box_t, class_t, pred["box_regression"].astype(np.float64),
                              pred["class_logits"].astype(np.float64))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # sample_weight weighs images; all-padding targets give loss 0
    weighted = model.compute_loss(images, targets, y_pred, sample_weight=np.array([1.0, 0.0, 0.0], "float32"))
    first = numpy_multibox(box_t[:1], class_t[:1], pred["box_regression"][:1].astype(np.float64),
                           pred["class_logits"][:1].astype(np.float64)) * (class_t[:1] > 0).sum() / (class_t > 0).sum()
    np.testing.assert_allclose(float(ops.convert_to_numpy(weighted)), first, rtol=1e-5)
    empty = {"boxes": np.zeros_like(targets["boxes"]), "labels": np.full_like(targets["labels"], -1)}
    assert float(ops.convert_to_numpy(model.compute_loss(images, empty, y_pred))) == 0.0


def test_fit_steps_finite_and_jit_equal():
    model = tiny_model()
    images, targets = tiny_data(batch=4, seed=2)
    eager = to_numpy(model.predict_step(images))
    model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9), jit_compile=True)
    jitted = model.predict(images, batch_size=4, verbose=0)
    for key in ("boxes", "scores"):
        np.testing.assert_allclose(jitted[key], eager[key], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(jitted["num_detections"], eager["num_detections"])
    before = [np.array(w) for w in model.get_weights()]
    history = model.fit(images, targets, batch_size=2, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"])) and history.history["loss"][0] > 0
    moved = [not np.allclose(a, b) for a, b in zip(before, model.get_weights())]
    assert all(moved), "every weight (backbone, NNFM, NEM, NTM, heads) gets a gradient"


@pytest.mark.single_backend
def test_mixed_bfloat16_steps_finite():
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = tiny_model()
    images, targets = tiny_data(batch=2, seed=3)
    out = model(images)
    assert keras.backend.standardize_dtype(out["class_logits"].dtype) == "bfloat16"
    assert all(w.dtype == "float32" for w in model.weights)
    loss = model.compute_loss(images, targets, out)
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    model.compile(optimizer=keras.optimizers.SGD(1e-3), jit_compile=True)
    history = model.fit(images, targets, batch_size=2, epochs=3, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    detections = to_numpy(model.predict_step(images))
    assert detections["boxes"].dtype == np.float32 and np.all(np.isfinite(detections["boxes"]))


def test_predict_step_contract():
    """Padded detections of the decoder, boxes clipped to the image, 0-based classes."""
    model = tiny_model(decoder=SSDDecoder(score_threshold=0.2, max_detections=9))
    images, _ = tiny_data(batch=2, seed=4)
    out = to_numpy(model.predict_step(images))
    assert {k: v.shape for k, v in out.items()} == {"boxes": (2, 9, 4), "scores": (2, 9), "classes": (2, 9),
                                                    "num_detections": (2,)}
    raw = to_numpy(model.decoder(*(model(images)[k] for k in ("box_regression", "class_logits")), model.anchors))
    np.testing.assert_allclose(out["boxes"], np.clip(raw["boxes"], 0, SIZE), atol=1e-6)
    assert out["classes"].max() < NUM_CLASSES and out["classes"].dtype == np.int32
    for b in range(2):
        n = out["num_detections"][b]
        assert np.all(out["scores"][b, :n] > 0.2) and np.all(out["classes"][b, n:] == -1)


@pytest.mark.single_backend
def test_config_and_keras_round_trip(tmp_path):
    model = tiny_model(decoder=SSDDecoder(score_threshold=0.05, max_detections=12), netm_pairs=((1, 3),),
                       nem_gate="max", ntm_pool="max", anchor_generator=SSDAnchorGenerator(clip="center_size"),
                       label_encoder=SSDLabelEncoder(iou_threshold=0.4))
    config = model.get_config()
    for key in ("num_classes", "image_size", "backbone", "net_modules", "width_multiplier", "fusion_channels",
                "anchor_generator", "label_encoder", "decoder", "fusion_levels", "netm_pairs", "nem_gate", "ntm_pool",
                "nnfm_pool", "negative_positive_ratio", "localization_weight", "pixel_mean"):
        assert key in config, key
    json.dumps(config)
    revived = SSDNet.from_config(config)
    assert revived.get_config() == config
    images, _ = tiny_data(batch=2, seed=5)
    path = str(tmp_path / "ssd_net.keras")
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(restored, SSDNet) and isinstance(restored.decoder, SSDDecoder)
    assert restored.decoder.max_detections == 12
    for key, value in to_numpy(model(images)).items():
        np.testing.assert_allclose(to_numpy(restored(images))[key], value, rtol=1e-6, atol=1e-6)
    for key, value in to_numpy(model.predict_step(images)).items():
        np.testing.assert_allclose(to_numpy(restored.predict_step(images))[key], value, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- TensorFlow: distribution, export

@pytest.mark.tensorflow_only
def test_export_reload_same_detections(tmp_path):
    import tensorflow as tf

    from keras_cvx.export.saved_model import export_saved_model

    model = tiny_model(decoder=SSDDecoder(score_threshold=0.05, max_detections=10))
    images, _ = tiny_data(batch=3, seed=7)
    uint8 = np.round(images).astype("uint8")
    expected = to_numpy(model.predict_step(uint8.astype("float32")))
    path = export_saved_model(model, str(tmp_path / "ssd_net" / "1"), (SIZE, SIZE), normalized_coordinates=False)
    loaded = tf.saved_model.load(path)
    served = {k: v.numpy() for k, v in loaded.signatures["serving_default"](images=tf.constant(uint8)).items()}
    np.testing.assert_array_equal(served["num_detections"], expected["num_detections"])
    for b in range(3):
        n = expected["num_detections"][b]
        assert n > 0
        x1, y1, x2, y2 = expected["boxes"][b, :n].T
        np.testing.assert_allclose(served["detection_boxes"][b, :n], np.stack([y1, x1, y2, x2], -1), atol=1e-3)
        np.testing.assert_allclose(served["detection_scores"][b, :n], expected["scores"][b, :n], atol=1e-5)
        np.testing.assert_array_equal(served["detection_classes"][b, :n], expected["classes"][b, :n])
