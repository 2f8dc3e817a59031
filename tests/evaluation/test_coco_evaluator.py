"""Tests for keras_cvx.evaluation.coco_evaluator against pycocotools run directly in the test."""

import contextlib
import io
import json

import keras
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from keras_cvx.data.coco import coco_dataset
from keras_cvx.data.shapes import synthetic_shapes
from keras_cvx.evaluation.coco_evaluator import STAT_NAMES, COCOEvaluationCallback, COCOEvaluator


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    path = synthetic_shapes(
        str(out), num_images=8, image_size=(40, 48), num_classes=4, max_objects=4,
        long_tailed=True, seed=11,
    )
    return path, str(out / "images")


def _batches(shapes, image_size, mask_stride=None):
    path, image_dir = shapes
    return list(coco_dataset(path, image_dir, image_size, 8, 4, False, mask_stride=mask_stride))


def _perfect(targets, with_masks=False):
    labels = targets["labels"].numpy()
    preds = {
        "boxes": targets["boxes"].numpy(),
        "scores": np.where(labels >= 0, 0.9, 0.0).astype(np.float32),
        "classes": labels,
        "num_detections": (labels >= 0).sum(axis=1),
    }
    if with_masks:
        preds["masks"] = targets["masks"].numpy()
    return preds


def test_perfect_predictions_give_ap_one(shapes):
    evaluator = COCOEvaluator(shapes[0], mask_stride=1)
    for _, targets in _batches(shapes, (40, 48), mask_stride=1):  # scale 1: masks exact
        evaluator.update(targets["image_info"], _perfect(targets, with_masks=True))
    result = evaluator.result()
    for iou_type in ("bbox", "segm"):
        assert result[f"{iou_type}/AP"] == pytest.approx(1.0)
        assert result[f"{iou_type}/AP50"] == pytest.approx(1.0)
        assert result[f"{iou_type}/AR100"] == pytest.approx(1.0)
    coco = COCO(shapes[0])
    for cat in coco.loadCats(coco.getCatIds()):
        expected = 1.0 if coco.getAnnIds(catIds=[cat["id"]]) else -1.0
        assert result[f"bbox/AP/{cat['name']}"] == pytest.approx(expected)
    groups = {c["frequency"] for c in coco.loadCats(coco.getCatIds())}
    assert {k for k in result if k.startswith("bbox/AP_")} == {f"bbox/AP_{ {'r': 'rare', 'c': 'common', 'f': 'frequent'}[g]}" for g in groups}


def test_perfect_boxes_survive_the_resize(shapes):
    evaluator = COCOEvaluator(shapes[0])
    for _, targets in _batches(shapes, (30, 30)):  # scale 0.625
        evaluator.update(targets["image_info"], _perfect(targets))
    assert evaluator.result()["bbox/AP"] == pytest.approx(1.0)


def test_perturbed_predictions_match_pycocotools(shapes):
    path = shapes[0]
    coco = COCO(path)
    rng = np.random.default_rng(0)
    evaluator = COCOEvaluator(path)
    direct = []
    for _, targets in _batches(shapes, (30, 30)):
        info = {k: v.numpy() for k, v in targets["image_info"].items()}
        labels = targets["labels"].numpy()
        preds = _perfect(targets)
        for b in range(labels.shape[0]):
            image_id, scale = int(info["image_id"][b]), float(info["scale"][b])
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
            for i, ann in enumerate(anns):
                x, y, w, h = ann["bbox"]
                dx, dy = rng.uniform(-3, 3, size=2)
                x, y = max(x + dx, 0.0), max(y + dy, 0.0)
                w, h = min(w, info["width"][b] - x), min(h, info["height"][b] - y)
                score = float(rng.uniform(0.1, 1.0))
                if i == 0:  # drop the first object's detection: a miss
                    preds["scores"][b, i], preds["classes"][b, i] = score, -1
                    continue
                preds["boxes"][b, i] = np.array([x, y, x + w, y + h]) * scale
                preds["scores"][b, i] = score
                direct.append({"image_id": image_id, "category_id": ann["category_id"], "bbox": [x, y, w, h], "score": score})
        evaluator.update(targets["image_info"], preds)
    result = evaluator.result()
    with contextlib.redirect_stdout(io.StringIO()):
        reference = COCOeval(coco, coco.loadRes(direct), "bbox")
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    got = np.array([result[f"bbox/{name}"] for name in STAT_NAMES])
    np.testing.assert_allclose(got, reference.stats, atol=1e-4)
    assert 0.05 < result["bbox/AP"] < 0.95


def test_masks_at_a_stride_map_back_to_the_original_image(tmp_path):
    from PIL import Image
    from pycocotools import mask as mask_utils

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "a.png")
    square = np.zeros((16, 16), np.uint8)
    square[4:12, 4:12] = 1
    rle = mask_utils.encode(np.asfortranarray(square))
    rle["counts"] = rle["counts"].decode("ascii")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 16, "width": 16}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 8, 8], "area": 64, "segmentation": rle, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "square"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    evaluator = COCOEvaluator(str(path), mask_stride=4)
    grid = np.zeros((1, 1, 8, 8), np.float32)  # image resized by 2 to 32x32, masks at stride 4
    grid[0, 0, 2:6, 2:6] = 1.0
    evaluator.update(
        {"image_id": [1], "height": [16], "width": [16], "scale": [2.0]},
        {"boxes": [[[8, 8, 24, 24]]], "scores": [[0.7]], "classes": [[0]], "num_detections": [1], "masks": grid},
    )
    result = evaluator.result()
    assert result["segm/AP"] == pytest.approx(1.0) and result["bbox/AP"] == pytest.approx(1.0)


def _served(coco, image_ids, fmt="normalized", n=6, rng=None, mask_pad=(0, 0)):
    """SavedModel-style outputs (``[ymin, xmin, ymax, xmax]``, float classes, 0/1 masks at the
    original resolution padded to the largest image plus ``mask_pad``) built from the ground
    truth of ``image_ids``; with ``rng`` the boxes are moved by up to 3 px and the first
    object of each image is missed. Returns ``(image_info, outputs, coco-format detections)``."""
    contiguous = {c: i for i, c in enumerate(sorted(coco.getCatIds()))}
    images = coco.loadImgs(image_ids)
    big_h = max(im["height"] for im in images) + mask_pad[0]
    big_w = max(im["width"] for im in images) + mask_pad[1]
    out = {
        "detection_boxes": np.zeros((len(images), n, 4), np.float32),
        "detection_scores": np.zeros((len(images), n), np.float32),
        "detection_classes": np.full((len(images), n), -1.0, np.float32),
        "num_detections": np.zeros((len(images),), np.int32),
        "detection_masks": np.ones((len(images), n, big_h, big_w), np.float32),  # 1s outside the image
        "image_info": np.zeros((len(images), 4, 2), np.float32),  # the served one: ignored
    }
    direct = []
    for b, im in enumerate(images):
        height, width = im["height"], im["width"]
        out["detection_masks"][b, :, :height, :width] = 0.0
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[im["id"]]))[:n]
        for i, ann in enumerate(anns):
            x, y, w, h = ann["bbox"]
            score = 0.9
            if rng is not None:
                x, y = np.clip([x, y] + rng.uniform(-3, 3, size=2), 0, [width - 1, height - 1])
                w, h = min(w, width - x), min(h, height - y)
                score = float(rng.uniform(0.1, 1.0))
                if i == 0:
                    continue
            yxyx = np.array([y, x, y + h, x + w])
            if fmt == "normalized":
                yxyx = yxyx / np.array([height, width, height, width])
            out["detection_boxes"][b, i] = yxyx
            out["detection_scores"][b, i] = score
            out["detection_classes"][b, i] = contiguous[ann["category_id"]]
            out["detection_masks"][b, i, :height, :width] = coco.annToMask(ann)
            direct.append(
                {"image_id": im["id"], "category_id": ann["category_id"], "bbox": [x, y, w, h], "score": score}
            )
        out["num_detections"][b] = len(anns)
    info = {"image_id": np.array(image_ids), "height": np.array([im["height"] for im in images]),
            "width": np.array([im["width"] for im in images])}
    return info, out, direct


def _pycocotools_stats(coco, detections, iou_type="bbox"):
    with contextlib.redirect_stdout(io.StringIO()):
        reference = COCOeval(coco, coco.loadRes(detections), iou_type)
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    return reference.stats


def test_served_outputs_of_perfect_detections_give_ap_one(shapes):
    coco = COCO(shapes[0])
    ids = sorted(coco.getImgIds())
    for fmt in ("normalized", "pixels"):
        evaluator = COCOEvaluator(shapes[0], served_box_format=fmt)
        for start in (0, 4):  # masks padded beyond the image with ones: cropped, not resized
            evaluator.update(*_served(coco, ids[start : start + 4], fmt, mask_pad=(3, 5))[:2])
        result = evaluator.result()
        for key in ("bbox/AP", "bbox/AP50", "bbox/AR100", "segm/AP", "segm/AR100"):
            assert result[key] == pytest.approx(1.0), (fmt, key)


def test_served_perturbed_boxes_match_pycocotools_in_both_formats(shapes):
    coco = COCO(shapes[0])
    ids = sorted(coco.getImgIds())
    stats = {}
    for fmt in ("normalized", "pixels"):
        evaluator = COCOEvaluator(shapes[0], served_box_format=fmt)
        direct = []
        rng = np.random.default_rng(1)
        for start in (0, 4):
            info, out, dets = _served(coco, ids[start : start + 4], fmt, rng=rng)
            del out["detection_masks"]
            evaluator.update(info, out)
            direct += dets
        result = evaluator.result()
        stats[fmt] = np.array([result[f"bbox/{name}"] for name in STAT_NAMES])
        np.testing.assert_allclose(stats[fmt], _pycocotools_stats(coco, direct), atol=1e-4)
        assert 0.05 < result["bbox/AP"] < 0.95 and "segm/AP" not in result
    np.testing.assert_allclose(stats["normalized"], stats["pixels"], atol=1e-6)


def test_unknown_image_id_is_refused_and_the_evaluator_keeps_working(shapes):
    coco = COCO(shapes[0])
    ids = sorted(coco.getImgIds())
    evaluator = COCOEvaluator(shapes[0])
    evaluator.update(*_served(coco, ids[:4])[:2])
    info, out, _ = _served(coco, ids[4:])
    bad = dict(info, image_id=np.array([ids[4], 987654, ids[6], ids[7]]))
    with pytest.raises(ValueError, match="987654"):
        evaluator.update(bad, out)
    evaluator.update(info, out)
    assert evaluator.result()["bbox/AP"] == pytest.approx(1.0)
    assert evaluator.result()["segm/AP"] == pytest.approx(1.0)


def test_bad_batches_are_refused_before_anything_is_kept(shapes):
    coco = COCO(shapes[0])
    ids = sorted(coco.getImgIds())
    evaluator = COCOEvaluator(shapes[0])
    info, out, _ = _served(coco, ids[:4])
    mixed = dict(out, boxes=out["detection_boxes"])
    with pytest.raises(ValueError, match=r"mixes SavedModel output names.*detection_boxes.*predict_step names.*boxes"):
        evaluator.update(info, mixed)
    with pytest.raises(ValueError, match="detection_scores"):
        evaluator.update(info, {k: v for k, v in out.items() if k != "detection_scores"})
    with pytest.raises(ValueError, match="same B"):
        evaluator.update(info, dict(out, num_detections=out["num_detections"][:3]))
    with pytest.raises(ValueError, match="original resolution"):  # masks in the model's frame
        evaluator.update(info, dict(out, detection_masks=out["detection_masks"][:, :, :8, :8]))
    with pytest.raises(ValueError, match="scale"):  # predict_step boxes need the resize scale
        evaluator.update(info, {"boxes": out["detection_boxes"], "scores": out["detection_scores"],
                                "classes": out["detection_classes"]})
    with pytest.raises(ValueError, match="served_box_format"):
        COCOEvaluator(shapes[0], served_box_format="xyxy")
    assert evaluator.result()["bbox/AP"] == 0.0 and "segm/AP" not in evaluator.result()


def test_no_detections_give_zeros(shapes):
    evaluator = COCOEvaluator(shapes[0])
    _, targets = _batches(shapes, (40, 48))[0]
    preds = _perfect(targets)
    preds["num_detections"][:] = 0
    evaluator.update(targets["image_info"], preds)
    result = evaluator.result()
    assert result["bbox/AP"] == 0.0 and "segm/AP" not in result
    # a mask model without a detection: its segm numbers are 0 too (not missing)
    evaluator.reset()
    preds["masks"] = np.zeros((len(preds["boxes"]), preds["boxes"].shape[1], 40, 48), np.float32)
    evaluator.update(targets["image_info"], preds)
    result = evaluator.result()
    assert result["segm/AP"] == 0.0 and result["segm/AR100"] == 0.0 and result["bbox/AP"] == 0.0


def test_rejects_unknown_class_map(shapes):
    with pytest.raises(ValueError, match="class_id_map"):
        COCOEvaluator(shapes[0], class_id_map={0: 1234})


class WholeImageDetector(keras.Model):
    """Predicts one class-0 box covering the padded image."""

    def call(self, images):
        batch = keras.ops.shape(images)[0]
        box = keras.ops.convert_to_tensor([[[0.0, 0.0, 48.0, 40.0]]])
        return {
            "boxes": keras.ops.tile(box, [batch, 1, 1]),
            "scores": keras.ops.ones((batch, 1)),
            "classes": keras.ops.zeros((batch, 1), "int32"),
            "num_detections": keras.ops.ones((batch,), "int32"),
        }


def test_callback_evaluates_every_n_epochs(shapes):
    path, image_dir = shapes
    dataset = coco_dataset(path, image_dir, (40, 48), 8, 4, False)
    model = WholeImageDetector()
    callback = COCOEvaluationCallback(COCOEvaluator(path), dataset, every_n_epochs=2)
    callback.set_model(model)
    logs = {}
    callback.on_epoch_end(0, logs)
    assert logs == {} and callback.history == []
    callback.on_epoch_end(1, logs)
    expected = COCOEvaluator(path)
    for images, targets in dataset:
        expected.update(targets["image_info"], model(images))
    assert callback.history[0][0] == 1
    assert logs["val_bbox/AP"] == pytest.approx(expected.result()["bbox/AP"])
    assert len(logs) == len(expected.result())
