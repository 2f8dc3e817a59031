"""Tests for keras_cvx.models.condinst.CondInst on tiny configurations (64x64 input, a
Functional backbone of five stride-2 convs, 8-channel FPN, one conv per tower): the loss terms
against a NumPy CondInst loss (FCOS targets with mask centres of mass, focal, GIoU with +1,
center-ness BCE, dice of the NumPy dynamic heads), the ``predict_step`` contract (masks of the
kept detections from NumPy dynamic heads, x4 aligned_bilinear, threshold 0.5), the config and
``.keras`` round trip (backbone serialised), the Trainer under XLA and under MirroredStrategy
on 2 logical CPUs against a hand-written step, and SavedModel export (boxes, and masks mapped
to the original image against a NumPy crop / bilinear resize / threshold)."""

import inspect
import json

import keras
import numpy as np
import pytest
from keras import ops

from keras_cvx.heads.condinst import CondInstMaskBranch
from keras_cvx.heads.fcos import FCOSHead
from keras_cvx.layers.fcos_decoder import FCOSDecoder
from keras_cvx.models.condinst import CondInst
from keras_cvx.models.necks.fpn import FeaturePyramid
from tests.layers.test_dynamic_mask_head import numpy_dynamic_head
from tests.losses.test_dice import numpy_dice
from tests.losses.test_focal import numpy_focal
from tests.losses.test_iou import numpy_loss as numpy_iou_loss
from tests.models.instance_export import check_export_of_full_image_masks
from tests.models.label_encoders.test_fcos import numpy_fcos_targets
from tests.models.trainer_steps import run_and_check
from tests.numpy_layers import aligned_bilinear

SIZE = 64
NUM_CLASSES = 3


def tiny_backbone(width=8, min_level=3):
    """64x64 -> {"C3": 8x8, "C4": 4x4, "C5": 2x2} (five stride-2 convs; from ``C{min_level}``)."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x, outputs = inputs / 64.0, {}
    for level in range(1, 6):
        x = keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu", name=f"conv{level}")(x)
        if level >= min_level:
            outputs[f"C{level}"] = x
    return keras.Model(inputs, outputs, name="tiny_backbone")


def tiny_model(seed=0, max_detections=10, **kwargs):
    """A CondInst of 64x64 inputs (86 FCOS locations); class logits biased to 0 so that
    untrained detections pass the 0.05 threshold, and larger controller weights so that the
    untrained masks are not all near probability 0.5."""
    keras.utils.set_random_seed(seed)
    kwargs.setdefault("backbone", tiny_backbone())
    model = CondInst(NUM_CLASSES, image_size=SIZE, neck=FeaturePyramid(8),
                     head=FCOSHead(NUM_CLASSES, num_convs=1, groups=4, return_box_features=True),
                     mask_branch=CondInstMaskBranch(8, num_convs=1),
                     decoder=FCOSDecoder(max_detections=max_detections), max_proposals=64, seed=seed, **kwargs)
    rng = np.random.default_rng(seed)
    model.head.class_conv.bias.assign(np.zeros(NUM_CLASSES, "float32"))
    kernel = model.controller.conv.kernel
    kernel.assign(rng.normal(0, 0.3, kernel.shape).astype("float32"))
    return model


def tiny_data(batch=2, seed=0):
    """Images and ground truth: boxes, labels (-1 padding), stride-4 masks (ellipses inside
    the boxes) of 1..3 objects per image."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (batch, SIZE, SIZE, 3)).astype("float32")
    boxes = np.zeros((batch, 3, 4), "float32")
    labels = np.full((batch, 3), -1, "int32")
    masks = np.zeros((batch, 3, SIZE // 4, SIZE // 4), "uint8")
    yy, xx = np.mgrid[0 : SIZE // 4, 0 : SIZE // 4] * 4.0 + 2.0  # stride-4 cell centres
    for b in range(batch):
        for m in range(1 + (b + seed) % 3):
            w, h = rng.uniform(12, 56, 2)
            x1, y1 = rng.uniform(0, SIZE - w), rng.uniform(0, SIZE - h)
            boxes[b, m] = [x1, y1, x1 + w, y1 + h]
            labels[b, m] = rng.integers(0, NUM_CLASSES)
            masks[b, m] = ((xx - x1 - w / 2) / (w / 2)) ** 2 + ((yy - y1 - h / 2) / (h / 2)) ** 2 <= 1
    return images, {"boxes": boxes, "labels": labels, "masks": masks}


def to_numpy(structure):
    return {k: np.asarray(ops.convert_to_numpy(v)) for k, v in structure.items()}


def run(fn, *arrays):
    """``fn(*arrays)`` as NumPy: eager under TensorFlow; under JAX one ``jax.jit`` (eager JAX
    compiles every op separately, which takes minutes for a whole detector), stateless."""
    if keras.backend.backend() == "jax":
        import jax

        def stateless(*args):
            with keras.StatelessScope():
                return fn(*args)

        return keras.tree.map_structure(lambda t: np.asarray(ops.convert_to_numpy(t)), jax.jit(stateless)(*arrays))
    return keras.tree.map_structure(lambda t: np.asarray(ops.convert_to_numpy(t)), fn(*arrays))


@pytest.fixture(scope="module")
def model():
    """One tiny model for the tests that do not change it (built once: under JAX every new
    weight shape compiles its initializer)."""
    return tiny_model(max_detections=10)


# ---------------------------------------------------------------- NumPy CondInst loss

def numpy_mask_centers(masks, boxes, stride=4):
    """Centres of mass of the stride-4 masks at full resolution (each cell = stride x stride
    pixels, integer pixel indices); the box centre for an empty mask."""
    centers = np.zeros(masks.shape[:2] + (2,))
    for b in range(masks.shape[0]):
        for m in range(masks.shape[1]):
            full = np.kron(masks[b, m], np.ones((stride, stride)))
            ys, xs = np.nonzero(full)
            x1, y1, x2, y2 = boxes[b, m]
            centers[b, m] = [xs.mean(), ys.mean()] if len(xs) else [(x1 + x2) / 2, (y1 + y2) / 2]
    return centers


def numpy_fcos_loss(model, y, out):
    """FCOS's three terms (focal, GIoU with +1 weighted by center-ness, center-ness BCE) from
    the raw outputs, and the positives ``(b_idx, n_idx)`` with their box targets."""
    locations, levels = np.asarray(model.locations), np.asarray(model.levels)
    centers = numpy_mask_centers(y["masks"], y["boxes"])
    labels, box_targets, ctr_targets = numpy_fcos_targets(y["boxes"].astype(np.float64), y["labels"], locations,
                                                          levels, centers)
    positive = labels >= 0
    num_pos = max(positive.sum(), 1)
    one_hot = np.zeros(out["class_logits"].shape)
    b_idx, n_idx = np.nonzero(positive)
    one_hot[b_idx, n_idx, labels[positive]] = 1
    terms = {"loss_cls": numpy_focal(one_hot, out["class_logits"]).sum() / num_pos}
    giou = numpy_iou_loss(box_targets[positive], out["box_regression"][positive], "giou")
    terms["loss_box"] = (giou * ctr_targets[positive]).sum() / max(ctr_targets[positive].sum(), 1.0)
    z = out["centerness_logits"][positive].astype(np.float64)
    t = ctr_targets[positive]
    terms["loss_ctr"] = (np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))).sum() / num_pos
    return terms, b_idx, n_idx, box_targets


def numpy_condinst_loss(model, y, out):
    """The four terms of CondInst's loss (arXiv 2003.05664 Sec. 3.3) from the raw outputs."""
    terms, b_idx, n_idx, box_targets = numpy_fcos_loss(model, y, out)
    # every positive is a mask instance (fewer than max_proposals)
    terms["loss_mask"] = np.mean(list(numpy_instance_dice(model, y, out, box_targets, b_idx, n_idx).values()))
    return terms, len(b_idx)


def numpy_matched_gt(model, y, box_targets, b_idx, n_idx):
    """The ground-truth index of each positive ``(b_idx, n_idx)``: the one whose
    (l, t, r, b) / stride is its box target."""
    locations, levels = np.asarray(model.locations), np.asarray(model.levels)
    matched = []
    for b, n in zip(b_idx, n_idx):
        x, yy = locations[n]
        stride = model.anchor_generator.strides[levels[n]]
        distances = np.stack([x - y["boxes"][b, :, 0], yy - y["boxes"][b, :, 1], y["boxes"][b, :, 2] - x,
                              y["boxes"][b, :, 3] - yy], -1) / stride
        match = np.flatnonzero(np.all(np.abs(distances - box_targets[b, n]) < 1e-5, -1) & (y["labels"][b] >= 0))
        assert len(match) == 1
        matched.append(match[0])
    return np.asarray(matched)


def numpy_instance_dice(model, y, out, box_targets, b_idx, n_idx):
    """``{(image, location): dice loss}`` of the dynamic heads of the positives ``(b_idx, n_idx)``;
    the target of each is the mask of the ground truth it was assigned."""
    locations, levels = np.asarray(model.locations), np.asarray(model.levels)
    matched = numpy_matched_gt(model, y, box_targets, b_idx, n_idx)
    gts = [y["masks"][b, m] for b, m in zip(b_idx, matched)]
    logits = numpy_dynamic_head(out["mask_features"], out["mask_params"][b_idx, n_idx], locations[n_idx],
                                levels[n_idx], b_idx)
    dice = numpy_dice(np.stack(gts), 1 / (1 + np.exp(-logits)))
    return dict(zip(zip(b_idx.tolist(), n_idx.tolist()), dice))


def test_loss_terms_match_numpy(model):
    images, y = tiny_data(batch=2, seed=1)
    empty = {"boxes": np.zeros((2, 3, 4), "float32"), "labels": np.full((2, 3), -1, "int32"),
             "masks": np.zeros((2, 3, 16, 16), "uint8")}

    def loss(images, y, empty):
        out = model(images, training=True)
        return out, model.loss_terms(y, out), model.loss_terms(empty, out)

    out, terms, empty_terms = run(loss, images, y, empty)
    assert out["mask_params"].shape == (2, model.num_locations, 169) and out["mask_features"].shape == (2, 8, 8, 8)
    expected, num_positives = numpy_condinst_loss(model, y, out)
    assert 0 < num_positives <= model.max_proposals
    assert sorted(terms) == ["loss_box", "loss_cls", "loss_ctr", "loss_mask"]
    for key, value in expected.items():
        np.testing.assert_allclose(terms[key], value, rtol=1e-4, err_msg=key)
    # no ground truth at all: finite, and the box, center-ness and mask terms are 0
    assert all(np.isfinite(list(empty_terms.values())))
    assert empty_terms["loss_mask"] == empty_terms["loss_box"] == empty_terms["loss_ctr"] == 0.0
    if keras.backend.backend() == "tensorflow":  # eager: the Keras metrics of the terms are updated
        total = float(model.compute_loss(images, y, {k: ops.convert_to_tensor(v) for k, v in out.items()}))
        np.testing.assert_allclose(total, sum(expected.values()), rtol=1e-4)
        results = {m.name: float(m.result()) for m in model.metrics if m.name in terms}
        assert results == pytest.approx({k: float(v) for k, v in terms.items()}, rel=1e-5)


def test_mask_loss_samples_at_most_max_proposals(model, monkeypatch):
    monkeypatch.setattr(model, "max_proposals", 3)
    positive = np.zeros((2, model.num_locations), bool)
    positive[0, [3, 9, 40]] = positive[1, [0, 85]] = True
    index, valid = (np.asarray(ops.convert_to_numpy(t)) for t in model.sample_instances(positive))
    assert index.shape == (3,) and valid.all()
    assert set(index.tolist()) <= {3, 9, 40, model.num_locations, model.num_locations + 85}
    assert len(set(index.tolist())) == 3
    few = np.zeros_like(positive)
    few[1, 7] = True
    index, valid = (np.asarray(ops.convert_to_numpy(t)) for t in model.sample_instances(few))
    assert valid.tolist() == [True, False, False] and index[0] == model.num_locations + 7


def _samples(model, positive):
    return tuple(np.asarray(ops.convert_to_numpy(t)) for t in model.sample_instances(positive))


@pytest.fixture()
def reseed(model):
    """``reseed(seed)`` puts the shared model's sampling generator in the state of
    ``SeedGenerator(seed)``; the state is restored after the test."""
    state = model.seed_generator.state
    saved = np.asarray(ops.convert_to_numpy(state))
    yield lambda seed: state.assign(np.asarray([seed, 0], saved.dtype))
    state.assign(saved)


def test_sample_instances_cap_is_500_positives_of_the_whole_batch(model, monkeypatch, reseed):
    """Spec section 6 (``MAX_PROPOSALS = 500``, Base-CondInst.yaml): more positives than the cap
    -> exactly ``max_proposals`` distinct positives; at most the cap -> every positive, the
    other slots invalid. The positives of all images of the batch are counted together."""
    assert inspect.signature(CondInst).parameters["max_proposals"].default == 500
    monkeypatch.setattr(model, "max_proposals", 500)
    rng = np.random.default_rng(0)
    shape = (3, 300)  # sample_instances only flattens the [B, N] mask: N need not be the model's
    for count in (650, 501, 500, 37, 1):
        positive = np.zeros(np.prod(shape), bool)
        positive[rng.choice(positive.size, count, replace=False)] = True
        index, valid = _samples(model, positive.reshape(shape))
        assert index.shape == valid.shape == (500,) and index.dtype == np.int32
        assert np.all((index >= 0) & (index < positive.size))  # padding slots gather in range too
        chosen = index[valid]
        assert len(chosen) == min(count, 500) and len(set(chosen.tolist())) == len(chosen), count
        assert positive[chosen].all(), count
        if count <= 500:
            assert set(chosen.tolist()) == set(np.flatnonzero(positive).tolist()), count
    nothing = _samples(model, np.zeros(shape, bool))[1]
    assert not nothing.any()
    # the same seed, the same sample
    positive = np.zeros(shape, bool)
    positive[:, ::2] = True
    draws = []
    for _ in range(2):
        reseed(5)
        draws.append(_samples(model, positive)[0])
    np.testing.assert_array_equal(draws[0], draws[1])


def test_sample_instances_is_a_uniform_subset_of_the_batch(model, monkeypatch, reseed):
    """Spec section 6: "a uniformly random subset" of the replica batch's positives (a random
    permutation, not per image, not by score). 5 positives (4 in image 0, 1 in image 1), cap
    2: over 800 draws every positive is kept with frequency ~ 2/5 and each of the 10 pairs with
    frequency ~ 1/10 (standard errors 0.017 and 0.011; the tolerances are ~4.5 of them)."""
    monkeypatch.setattr(model, "max_proposals", 2)
    reseed(11)
    num = model.num_locations
    positive = np.zeros((2, num), bool)
    positive[0, [0, 17, 40, 85]] = positive[1, [3]] = True
    flat = np.flatnonzero(positive)
    draws = 800
    kept = np.zeros(len(flat))
    pairs = {}
    for _ in range(draws):
        index, valid = _samples(model, positive)
        assert valid.all() and len(set(index.tolist())) == 2 and positive.reshape(-1)[index].all()
        kept += np.isin(flat, index)
        pair = tuple(sorted(index.tolist()))
        pairs[pair] = pairs.get(pair, 0) + 1
    np.testing.assert_allclose(kept / draws, 2 / 5, atol=0.08)
    assert len(pairs) == 10  # every pair of the 5 positives occurs
    np.testing.assert_allclose(np.array(list(pairs.values())) / draws, 1 / 10, atol=0.05)


def test_mask_loss_is_the_mean_dice_of_the_sampled_instances(model, monkeypatch):
    """The mask loss runs the dynamic heads of the sampled slots only and averages their dice
    over the valid slots (spec section 6; section 10 item 10): with a fixed sample of every
    other positive (fewer than the positives), it is the NumPy dice mean over that subset."""
    images, y = tiny_data(batch=2, seed=1)
    out = run(lambda im: model(im, training=True), images)
    locations, levels = np.asarray(model.locations), np.asarray(model.levels)
    centers = numpy_mask_centers(y["masks"], y["boxes"])
    labels, box_targets, _ = numpy_fcos_targets(y["boxes"].astype(np.float64), y["labels"], locations, levels,
                                                 centers)
    b_idx, n_idx = np.nonzero(labels >= 0)
    dice = numpy_instance_dice(model, y, out, box_targets, b_idx, n_idx)
    subset = list(dice)[::2]
    assert 2 <= len(subset) < len(dice)
    slots = model.max_proposals
    index = np.zeros(slots, np.int32)
    index[: len(subset)] = [b * model.num_locations + n for b, n in subset]
    valid = np.arange(slots) < len(subset)
    monkeypatch.setattr(model, "sample_instances", lambda positive: (index, valid))
    terms = run(model.loss_terms, y, out)
    np.testing.assert_allclose(terms["loss_mask"], np.mean([dice[key] for key in subset]), rtol=1e-4)


# ---------------------------------------------------------------- semantic loss (spec section 4)

def numpy_semantic_targets(masks, labels, num_classes, mask_stride=4, out_stride=8):
    """AdelaiDet ``MaskBranch`` semantic targets, one pixel at a time: the stride-4 masks as
    full-resolution bitmasks (a cell covers ``mask_stride`` x ``mask_stride`` pixels), at the
    pixels of offset ``out_stride // 2`` and step ``out_stride`` the class of the covering GT
    (label >= 0) with the smallest mask area, the first in GT order on equal areas (torch's
    ``min``), one-hot; zeros where no GT mask covers the pixel."""
    full = masks.repeat(mask_stride, axis=2).repeat(mask_stride, axis=3).astype(np.int64)
    areas = full.sum(axis=(2, 3))
    sampled = full[:, :, out_stride // 2 :: out_stride, out_stride // 2 :: out_stride]
    batch, count, height, width = sampled.shape
    targets = np.zeros((batch, height, width, num_classes))
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                covering = [m for m in range(count) if labels[b, m] >= 0 and sampled[b, m, i, j]]
                if covering:
                    best = min(covering, key=lambda m: (areas[b, m], m))
                    targets[b, i, j, labels[b, best]] = 1.0
    return targets


def semantic_data():
    """Stride-4 masks [2, 5, 16, 16] of a 64x64 input. Image 0: a large mask (class 0) holding two
    overlapping masks of equal area (classes 2 and 1: the first wins where they overlap); a
    padding row (label -1) with a small mask that would otherwise win; a mask of the even
    stride-4 rows only (class 1), which the stride-8 centres (odd rows) never see. Image 1:
    random masks, two valid rows and three padding rows (random masks too)."""
    rng = np.random.default_rng(4)
    masks = np.zeros((2, 5, 16, 16), np.uint8)
    masks[0, 0, 0:12, 0:12] = 1
    masks[0, 1, 4:10, 4:10] = 1
    masks[0, 2, 6:12, 6:12] = 1
    masks[0, 3, 10:12, 10:12] = 1
    masks[0, 4, [0, 2, 12, 14], :] = 1
    masks[1] = rng.uniform(size=(5, 16, 16)) < 0.3
    masks[1, 1, 2:14, 3:15] = 1
    labels = np.array([[0, 2, 1, -1, 1], [2, 0, -1, -1, -1]], np.int32)
    return {"boxes": np.zeros((2, 5, 4), "float32"), "labels": labels, "masks": masks}


def test_semantic_targets_match_numpy(model):
    y = semantic_data()
    targets = run(model.semantic_targets, y)
    expected = numpy_semantic_targets(y["masks"], y["labels"], NUM_CLASSES)
    assert targets.shape == (2, 8, 8, NUM_CLASSES)
    np.testing.assert_array_equal(targets, expected)
    # the hand-made image: the rules each decide some pixels
    classes = np.where(expected[0].any(-1), expected[0].argmax(-1), -1)
    # (i, j) samples stride-4 cell (2i + 1, 2j + 1)
    assert classes[2, 2] == 2 and classes[5, 2] == 0  # the smallest covering mask; the large one alone
    assert classes[3, 3] == 2  # masks 1 (class 2) and 2 (class 1) of equal area: the first in GT order
    assert classes[5, 5] == 1  # mask 2, not the smaller padding row
    assert classes[0, 0] == 0 and np.all(classes[6:] == -1)  # the even-row mask is never sampled
    assert 0 < expected[1].sum() < 64


@pytest.mark.single_backend  # builds a second model (with the semantic head); slow under JAX
def test_semantic_loss_term_matches_numpy_focal():
    """``semantic_loss=True``: the training call adds ``semantic_logits`` [B, H/8, W/8, K]
    (inference does not), and ``loss_sem`` = sum of the focal loss (0.25, 2) of those logits on
    the NumPy targets / max(#positive one-hot entries, 1), a term of ``compute_loss`` and a
    metric."""
    model = tiny_model(semantic_loss=True)
    images, _ = tiny_data(batch=2, seed=1)
    y = semantic_data()
    y["boxes"] = np.tile([[4, 4, 44, 44]], (2, 5, 1)).astype("float32")
    out = run(lambda im: model(im, training=True), images)
    assert out["semantic_logits"].shape == (2, 8, 8, NUM_CLASSES)
    assert "semantic_logits" not in run(lambda im: model(im, training=False), images)
    terms = run(model.loss_terms, y, out)
    assert sorted(terms) == ["loss_box", "loss_cls", "loss_ctr", "loss_mask", "loss_sem"]
    targets = numpy_semantic_targets(y["masks"], y["labels"], NUM_CLASSES)
    expected = numpy_focal(targets, out["semantic_logits"]).sum() / max(targets.sum(), 1)
    np.testing.assert_allclose(terms["loss_sem"], expected, rtol=1e-4)
    empty = {"boxes": np.zeros((2, 5, 4), "float32"), "labels": np.full((2, 5), -1, "int32"),
             "masks": np.zeros((2, 5, 16, 16), "uint8")}
    np.testing.assert_allclose(run(model.loss_terms, empty, out)["loss_sem"],
                               numpy_focal(np.zeros_like(targets), out["semantic_logits"]).sum(), rtol=1e-4)
    if keras.backend.backend() == "tensorflow":
        total = float(model.compute_loss(images, y, {k: ops.convert_to_tensor(v) for k, v in out.items()}))
        np.testing.assert_allclose(total, sum(float(v) for v in terms.values()), rtol=1e-5)
        results = {m.name: float(m.result()) for m in model.metrics}
        assert results["loss_sem"] == pytest.approx(float(terms["loss_sem"]), rel=1e-5)


def test_predict_step_contract_and_masks_match_numpy(model):
    images, _ = tiny_data(batch=2, seed=2)
    strides = np.asarray(model.anchor_generator.strides, np.float32)[np.asarray(model.levels)]

    def predict(images):
        raw = model(images, training=False)
        decoded = model.decoder(raw["class_logits"], raw["box_regression"] * strides[:, None],
                                raw["centerness_logits"], model.locations, level_sizes=model.level_sizes)
        return model.predict_step(images), raw, decoded

    out, raw, decoded = run(predict, images)
    assert {k: v.shape for k, v in out.items()} == {"boxes": (2, 10, 4), "scores": (2, 10), "classes": (2, 10),
                                                    "num_detections": (2,), "masks": (2, 10, SIZE, SIZE)}
    assert out["masks"].dtype == np.uint8 and set(np.unique(out["masks"])) <= {0, 1}
    np.testing.assert_allclose(out["boxes"], np.clip(decoded["boxes"], 0, SIZE), atol=1e-5)
    np.testing.assert_array_equal(out["classes"], decoded["classes"])
    locations, levels = np.asarray(model.locations), np.asarray(model.levels)
    for b in range(2):
        n = out["num_detections"][b]
        assert n > 0 and np.all(out["masks"][b, n:] == 0) and np.all(out["classes"][b, n:] == -1)
        index = decoded["locations"][b, :n]
        logits = numpy_dynamic_head(raw["mask_features"], raw["mask_params"][b, index], locations[index],
                                    levels[index], np.full(n, b))
        probabilities = aligned_bilinear(np.transpose(1 / (1 + np.exp(-logits)), (1, 2, 0))[None], 4)[0]
        expected = np.transpose(probabilities > 0.5, (2, 0, 1))
        margin = np.abs(np.transpose(probabilities, (2, 0, 1)) - 0.5) > 1e-4  # away from the threshold
        np.testing.assert_array_equal(out["masks"][b, :n][margin], expected[margin])
        assert 0 < expected.mean() < 1  # masks neither empty nor full


@pytest.mark.single_backend
def test_config_and_keras_round_trip(tmp_path):
    model = tiny_model(max_detections=6, mask_threshold=0.4, pixel_mean=(1.0, 2.0, 3.0))
    config = model.get_config()
    for key in ("num_classes", "image_size", "backbone", "width_multiplier", "neck", "head", "controller",
                "mask_branch", "mask_head", "anchor_generator", "label_encoder", "decoder", "semantic_loss",
                "max_proposals", "mask_threshold", "pixel_mean", "seed"):
        assert key in config, key
    assert isinstance(config["backbone"], dict) and config["backbone"]["config"]["name"] == "tiny_backbone"
    json.dumps(config)
    revived = CondInst.from_config(config)
    assert revived.get_config() == config
    images, _ = tiny_data(batch=2, seed=3)
    path = str(tmp_path / "condinst.keras")
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(restored, CondInst) and restored.decoder.max_detections == 6 and restored.mask_threshold == 0.4
    assert len(restored.weights) == len(model.weights)
    for a, b in zip(restored.weights, model.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b), err_msg=b.path)
    expected, got = run(model.predict_step, images), run(restored.predict_step, images)
    assert expected["num_detections"].min() > 0 and expected["masks"].any()
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-5, err_msg=key)


@pytest.mark.single_backend  # builds a ResNet-10; slow to initialise under JAX, and nothing backend-specific
def test_named_backbone_width_multiplier_and_checks():
    model = CondInst(NUM_CLASSES, image_size=(64, 96), backbone="resnet10", width_multiplier=0.125,
                     neck=FeaturePyramid(8), head=FCOSHead(NUM_CLASSES, num_convs=1, groups=4,
                                                           return_box_features=True),
                     mask_branch=CondInstMaskBranch(8, num_convs=1))
    config = model.get_config()
    assert config["width_multiplier"] == 0.125 and isinstance(config["backbone"], dict)
    assert model.backbone.get_layer(index=1) is not None
    c3 = model.backbone.output["C3"]
    assert tuple(c3.shape) == (None, 8, 12, 16)  # base width 64 x 0.125 = 8; C3 = 2 x 8 channels
    assert CondInst.from_config(config).count_params() == model.count_params()
    for kwargs, name in [({"image_size": 48}, "image_size"), ({"width_multiplier": 0}, "width_multiplier"),
                         ({"backbone": "vgg16"}, "backbone"), ({"max_proposals": 0}, "max_proposals"),
                         ({"mask_threshold": 1.0}, "mask_threshold")]:
        with pytest.raises(ValueError, match=name):
            CondInst(NUM_CLASSES, **{"backbone": tiny_backbone(), "image_size": 64, **kwargs})


# ---------------------------------------------------------------- TensorFlow: Trainer, distribution, export

@pytest.mark.tensorflow_only
def test_trainer_step_under_xla_and_mirrored_equals_hand_written_step(tmp_path):
    """``tests/models/trainer_steps.py`` in a fresh process (2 logical CPUs): one Trainer step
    with XLA on batch A, and one under MirroredStrategy on [A, A], against an eager
    GradientTape SGD step on A (see that file for why [A, A] on 2 replicas must equal A)."""
    result = run_and_check(tmp_path, "tests.models.test_condinst")
    assert 0 < result["positives"] <= 64
    # the step reaches every weight but the per-level box scales (ReLU(s x) is 0 at every
    # positive at this initialisation, or the level has no positive)
    assert all(path.startswith("fcos_head/scale") for path in result["unmoved"]), result["unmoved"]


@pytest.mark.tensorflow_only
def test_export_reload_same_boxes_and_masks_at_the_original_size(model, tmp_path):
    check_export_of_full_image_masks(model, tmp_path, SIZE)
