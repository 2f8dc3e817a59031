"""Tests for keras_cvx.models.faster_rcnn.FasterRCNN on tiny configurations (64x64 input, the
CondInst tests' backbone of five stride-2 convs from C2, 8-channel FPN, 16-unit box heads): the paper's
parameter counts at full size, the loss terms against NumPy (sibling CE / SmoothL1 of the
sampled RoIs, the RPN's BCE / SmoothL1(1/9) of the sampled anchors), TSD's gradient paths
inside the detector, the ``predict_step`` contract for every classification variant, the
config and ``.keras`` round trip, the Trainer under XLA and under MirroredStrategy on 2
logical CPUs against a hand-written step, and SavedModel export -> reload -> same detections."""

import json

import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.heads.roi_box import SiblingBoxHead
from keras_cvx.heads.rpn import RPNHead
from keras_cvx.heads.tsd import TSDHead
from keras_cvx.layers.proposal_generator import ProposalGenerator
from keras_cvx.layers.rcnn_decoder import RCNNDecoder
from keras_cvx.models.faster_rcnn import FasterRCNN
from keras_cvx.models.label_encoders import RoISampler, RPNLabelEncoder
from keras_cvx.models.necks.fpn import FeaturePyramid
from tests.models.test_condinst import tiny_backbone
from tests.models.trainer_steps import run_and_check

SIZE = 64
NUM_CLASSES = 3
SAMPLES_AT_RANDOM = True
"""The RPN's anchors and the RoIs are sampled at random (``tests/models/trainer_steps.py``)."""


def tiny_model(head="sibling", loss="softmax", seed=0, max_detections=8, **kwargs):
    keras.utils.set_random_seed(seed)
    head_class = TSDHead if head == "tsd" else SiblingBoxHead
    kwargs.setdefault("backbone", tiny_backbone(min_level=2))
    if loss == "eql":
        kwargs.setdefault("class_frequencies", [0.6, 0.1, 0.02])
        kwargs.setdefault("frequency_threshold", 0.2)
    return FasterRCNN(
        NUM_CLASSES, image_size=SIZE, neck=FeaturePyramid(8, 2, 6, "max_pool"), rpn_head=RPNHead(3, 5, 8),
        box_head=head_class(NUM_CLASSES, classification_loss=loss, hidden_units=16, name="box_head"),
        classification_loss=loss, rpn_label_encoder=RPNLabelEncoder(num_samples=32),
        train_proposals=ProposalGenerator(60, 40), test_proposals=ProposalGenerator(60, 30),
        roi_sampler=RoISampler(NUM_CLASSES, num_samples=16), decoder=RCNNDecoder(loss, max_detections=max_detections),
        seed=seed, **kwargs)


def tiny_data(batch=2, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (batch, SIZE, SIZE, 3)).astype("float32")
    boxes = np.zeros((batch, 3, 4), "float32")
    labels = np.full((batch, 3), -1, "int32")
    for b in range(batch):
        for m in range(1 + (b + seed) % 3):
            w, h = rng.uniform(12, 50, 2)
            x1, y1 = rng.uniform(0, SIZE - w), rng.uniform(0, SIZE - h)
            boxes[b, m] = [x1, y1, x1 + w, y1 + h]
            labels[b, m] = rng.integers(0, NUM_CLASSES)
    return images, {"boxes": boxes, "labels": labels}


def to_numpy(structure):
    return keras.tree.map_structure(lambda t: np.asarray(ops.convert_to_numpy(t)), structure)


def run(fn, *arrays):
    """``fn(*arrays)`` as NumPy: eager under TensorFlow; one stateless ``jax.jit`` under JAX."""
    if keras.backend.backend() == "jax":
        import jax

        def stateless(*args):
            with keras.StatelessScope():
                return fn(*args)

        return to_numpy(jax.jit(stateless)(*arrays))
    return to_numpy(fn(*arrays))


@pytest.mark.single_backend  # builds full-size models (nothing is run); the counts are backend-free
def test_paper_parameter_counts():
    """TSD spec §7 for 80 classes: ResNet-50 trunk 23,508,032, FPN 3,344,384, RPN 593,935,
    sibling head 14,310,805 (41,757,156 in all); TSD head 45,886,094 in training, of which
    31,575,289 are used at inference (73,332,445 in all)."""
    counts = {}
    for head in ("sibling", "tsd"):
        model = FasterRCNN(80, image_size=(800, 800), box_head=head)
        trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
        counts[head] = trainable
        assert sum(int(np.prod(v.shape)) for v in model.backbone.trainable_weights) == 23_508_032
        assert model.neck.count_params() == 3_344_384 and model.rpn_head.count_params() == 593_935
        assert model.box_head.count_params() == {"sibling": 14_310_805, "tsd": 45_886_094}[head]
    assert counts == {"sibling": 41_757_156, "tsd": 73_332_445}


def _numpy_bce(logits, targets):
    return np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))


def _numpy_smooth_l1(d, beta):
    return np.where(np.abs(d) < beta, 0.5 * d * d / beta, np.abs(d) - 0.5 * beta)


@pytest.mark.tensorflow_only  # replays the sampling by resetting the model's seed generator state
def test_sibling_and_rpn_losses_match_numpy():
    model = tiny_model(seed=1)
    images, y = tiny_data(seed=1)
    y_pred = model(images, training=True)
    state = model.seed_generator.state.numpy()
    terms = to_numpy(model.loss_terms(y, y_pred))
    model.seed_generator.state.assign(state)              # the same draws again, by hand
    rpn = to_numpy(model.rpn_label_encoder(y["boxes"], y["labels"], model.anchors, model.seed_generator))
    sample = to_numpy(model.roi_sampler(y_pred["proposals"], y_pred["proposal_valid"], y["boxes"], y["labels"],
                                        model.seed_generator))
    head = to_numpy(model.roi_heads(y_pred["features"], sample["rois"]))
    logits = to_numpy(y_pred["objectness_logits"])
    deltas = to_numpy(y_pred["anchor_deltas"])
    bce = box = 0.0
    for b in range(2):
        for index, label, target in zip(rpn["indices"][b], rpn["labels"][b], rpn["box_targets"][b]):
            if label >= 0:
                bce += _numpy_bce(logits[b, index], float(label == 1))
            if label == 1:
                box += _numpy_smooth_l1(deltas[b, index] - target, 1 / 9).sum()
    count = (rpn["labels"] >= 0).sum()
    assert terms["loss_rpn_cls"] == pytest.approx(bce / count, rel=1e-4)
    assert terms["loss_rpn_box"] == pytest.approx(box / count, rel=1e-4)
    ce = reg = 0.0
    labels = sample["labels"]
    for b in range(2):
        for r, label in enumerate(labels[b]):
            if label < 0:
                continue
            z = head["class_logits"][b, r].astype(np.float64)
            ce += np.log(np.exp(z - z.max()).sum()) + z.max() - z[label]
            if label < NUM_CLASSES:
                reg += _numpy_smooth_l1(head["box_deltas"][b, r, label] - sample["box_targets"][b, r], 1.0).sum()
    assert terms["loss_cls"] == pytest.approx(ce / (labels >= 0).sum(), rel=1e-4)
    assert terms["loss_box"] == pytest.approx(reg / (labels >= 0).sum(), rel=1e-4, abs=1e-7)
    assert (labels < NUM_CLASSES).sum() - (labels < 0).sum() > 0         # some positives were sampled


@pytest.mark.tensorflow_only
def test_tsd_gradient_paths_in_the_detector():
    """TSD §4: PC never reaches the sibling head (its values are detached); ΔR gets gradient from
    the TSD box loss through the regression target (not detached from P̂_r) and from PC-loc."""
    import tensorflow as tf

    model = tiny_model("tsd", seed=2)
    images, y = tiny_data(seed=2)
    head = model.box_head
    sibling = head.sibling.trainable_weights
    delta_r = [w for w in head.trainable_weights if "delta_r" in w.path]
    assert delta_r
    with tf.GradientTape(persistent=True) as tape:
        y_pred = model(images, training=True)
        terms = model.loss_terms(y, y_pred)
        pc = terms["loss_pc_cls"] + terms["loss_pc_loc"]
    assert all(g is None or not np.any(g) for g in tape.gradient(pc, sibling))
    assert any(g is not None and np.any(g) for g in tape.gradient(terms["loss_cls"], sibling))
    box_grad = tape.gradient(terms["loss_tsd_box"], delta_r)
    assert any(g is not None and np.any(g) for g in box_grad)


@pytest.mark.tensorflow_only  # replays the sampling by resetting the model's seed generator state
def test_tsd_regression_target_carries_the_gradient_of_delta_r(monkeypatch):
    """TSD §4: t^D = encode(GT, P̂_r) is not detached, so ΔR's gradient from the TSD box loss has a
    part through the target; detaching P̂_r inside the target (a re-implementation's mistake)
    must change that gradient."""
    import tensorflow as tf

    from keras_cvx.models import faster_rcnn

    model = tiny_model("tsd", seed=2)
    images, y = tiny_data(seed=2)
    delta_r = [w for w in model.box_head.trainable_weights if "delta_r" in w.path]
    y_pred = model(images, training=True)
    state = model.seed_generator.state.numpy()

    def box_gradient():
        model.seed_generator.state.assign(state)  # the same anchors and RoIs each time
        with tf.GradientTape() as tape:
            loss = model.loss_terms(y, y_pred)["loss_tsd_box"]
        return [g.numpy() for g in tape.gradient(loss, delta_r)]

    kept = box_gradient()
    encode = faster_rcnn.encode_boxes
    monkeypatch.setattr(faster_rcnn, "encode_boxes", lambda boxes, anchors, weights: encode(
        boxes, tf.stop_gradient(anchors), weights))
    detached = box_gradient()
    assert max(np.abs(a - b).max() for a, b in zip(kept, detached)) > 1e-3 * max(np.abs(a).max() for a in kept)


# the other variants differ in the head's output layer, the loss and the decoder's scores, each
# tested under both backends in its own file: they run under TensorFlow only (as the whole
# detector compiles for 15-40 s under JAX)
VARIANTS = [("sibling", "softmax"), ("tsd", "softmax")] + [
    pytest.param(head, loss, marks=pytest.mark.single_backend)
    for head, loss in (("sibling", "sigmoid"), ("sibling", "eql"), ("tsd", "eqlv2"))]


@pytest.mark.parametrize("head,loss", VARIANTS)
def test_loss_terms_and_predict_contract(head, loss):
    model = tiny_model(head, loss, seed=3)
    images, y = tiny_data(seed=3)
    terms = run(lambda x: model.loss_terms(y, model(x, training=True)), images)
    expected = {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}
    if head == "tsd":
        expected |= {"loss_tsd_cls", "loss_tsd_box", "loss_pc_cls", "loss_pc_loc"}
    assert set(terms) == expected and all(np.isfinite(v) and v >= 0 for v in terms.values())
    out = run(model.predict_step, images)
    assert out["boxes"].shape == (2, 8, 4) and out["classes"].shape == (2, 8) and out["num_detections"].shape == (2,)
    for b in range(2):
        n = out["num_detections"][b]
        assert (out["classes"][b, :n] >= 0).all() and (out["classes"][b, :n] < NUM_CLASSES).all()
        assert (out["classes"][b, n:] == -1).all() and (out["scores"][b, :n] > 0.05).all()
        assert (out["boxes"][b] >= 0).all() and (out["boxes"][b] <= SIZE).all()


def test_eql_head_starts_at_the_prior():
    """EQL §2.5: the sigmoid head's class bias is -log((1 - 0.001) / 0.001) = -6.9068."""
    model = tiny_model("sibling", "eql", seed=4)
    bias = ops.convert_to_numpy(model.box_head.class_score.bias)
    np.testing.assert_allclose(bias, -np.log(999.0), rtol=1e-6)


@pytest.mark.single_backend
def test_config_and_keras_round_trip(tmp_path):
    model = tiny_model("tsd", max_detections=6, pixel_mean=(1.0, 2.0, 3.0), classification_margin=0.25)
    config = model.get_config()
    json.dumps(config)
    assert FasterRCNN.from_config(config).get_config() == config
    images, _ = tiny_data(seed=5)
    path = str(tmp_path / "faster_rcnn.keras")
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(restored, FasterRCNN) and restored.is_tsd and restored.classification_margin == 0.25
    for a, b in zip(restored.weights, model.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b), err_msg=b.path)
    expected, got = run(model.predict_step, images), run(restored.predict_step, images)
    assert expected["num_detections"].min() > 0
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-5, err_msg=key)


@pytest.mark.single_backend
def test_arguments_are_checked():
    for kwargs, name in [({"image_size": 48}, "image_size"), ({"box_head": "cascade"}, "box_head"),
                         ({"classification_loss": "focal"}, "classification_loss"),
                         ({"classification_margin": 1.5}, "classification_margin"),
                         ({"width_multiplier": 0}, "width_multiplier"),
                         ({"backbone": "vgg16"}, "backbone")]:
        with pytest.raises(ValueError, match=name):
            FasterRCNN(NUM_CLASSES, **{"backbone": tiny_backbone(min_level=2), "image_size": SIZE, **kwargs})
    with pytest.raises(ValueError, match="class_frequencies"):
        FasterRCNN(NUM_CLASSES, backbone=tiny_backbone(min_level=2), image_size=SIZE, classification_loss="eql")
    with pytest.raises(ValueError, match="decoder"):
        FasterRCNN(NUM_CLASSES, backbone=tiny_backbone(min_level=2), image_size=SIZE, classification_loss="sigmoid",
                   decoder=RCNNDecoder("softmax"))
    model = tiny_model()
    with pytest.raises(ValueError, match="class ids"):
        model.loss_terms({"boxes": np.zeros((1, 1, 4), "float32"), "labels": np.array([[3]])},
                         model(np.zeros((1, SIZE, SIZE, 3), "float32"), training=True))


# ---------------------------------------------------------------- TensorFlow: Trainer, distribution, export

@pytest.mark.tensorflow_only
def test_trainer_step_under_xla_and_mirrored_equals_hand_written_step(tmp_path):
    """``tests/models/trainer_steps.py`` in a fresh process (2 logical CPUs): one Trainer step of the
    model (sibling head; TSD's gradient paths are tested above) with XLA on batch A, and one under MirroredStrategy on [A, A], against an eager
    GradientTape SGD step on A."""
    run_and_check(tmp_path, "tests.models.test_faster_rcnn")



@pytest.mark.tensorflow_only
def test_export_reload_same_detections(tmp_path):
    import tensorflow as tf

    from keras_cvx.data.transforms import resize_and_pad
    from keras_cvx.export.saved_model import export_saved_model

    model = tiny_model("tsd", seed=6)
    image = np.random.default_rng(6).integers(0, 256, (48, 64, 3)).astype("uint8")
    path = export_saved_model(model, str(tmp_path / "faster_rcnn" / "1"), (SIZE, SIZE), normalized_coordinates=False)
    loaded = tf.saved_model.load(path)
    served = {k: v.numpy() for k, v in loaded.signatures["serving_default"](images=tf.constant(image[None])).items()}
    padded, scale = resize_and_pad(image, (SIZE, SIZE))
    expected = to_numpy(model.predict_step(padded.numpy()[None]))
    n = expected["num_detections"][0]
    assert n > 0 and served["num_detections"][0] == n
    x1, y1, x2, y2 = (expected["boxes"][0, :n] / float(scale)).T
    boxes = np.stack([np.clip(y1, 0, 48), np.clip(x1, 0, 64), np.clip(y2, 0, 48), np.clip(x2, 0, 64)], -1)
    np.testing.assert_allclose(served["detection_boxes"][0, :n], boxes, atol=1e-3)
    np.testing.assert_allclose(served["detection_scores"][0, :n], expected["scores"][0, :n], atol=1e-5)
    np.testing.assert_array_equal(served["detection_classes"][0, :n], expected["classes"][0, :n])
