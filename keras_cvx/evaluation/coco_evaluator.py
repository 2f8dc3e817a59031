"""COCO evaluation with pycocotools: the 12 COCOeval numbers for ``bbox`` (and ``segm``),
per-class AP and AP of class groups (LVIS's rare/common/frequent), from padded predictions.

Predictions follow the detection contract of every model here (padded, static shapes):
``boxes`` float32 ``[B, N, 4]`` ``xyxy`` pixels in the resized/padded image, ``scores``
``[B, N]``, ``classes`` int32 ``[B, N]`` contiguous ids (``-1`` = padding), ``num_detections``
``[B]`` and optionally ``masks`` ``[B, N, H / mask_stride, W / mask_stride]`` (probabilities
or 0/1, thresholded at 0.5). The TF Model Garden names ``detection_boxes`` ... are accepted
too. ``image_info`` is ``targets["image_info"]`` of ``keras_cvx.data.coco`` (``image_id``,
original ``height``/``width``, ``scale``): boxes are divided by ``scale`` and clipped to the
original image; masks are resized by ``mask_stride / scale`` (bilinear) and cropped to it.

Per-class AP is COCO's AP@[.5:.95] (area all, 100 detections) of one category, ``-1`` when
the category has no ground truth. A group's AP is the mean of its classes' APs (as LVIS
computes APr/APc/APf), over classes with ground truth.
"""

import contextlib
import io

import keras
import numpy as np
import tensorflow as tf
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from keras_cvx.data.coco import class_id_map as default_class_id_map
from keras_cvx.data.coco import load_coco
from keras_cvx.validation import require_positive_int

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
_ALIASES = {
    "detection_boxes": "boxes",
    "detection_scores": "scores",
    "detection_classes": "classes",
    "detection_masks": "masks",
}
_GROUP_NAMES = {"r": "rare", "c": "common", "f": "frequent"}


class COCOEvaluator:
    """Accumulates predictions with ``update`` and evaluates them with ``result``.

    Args:
        annotation_file: path of the ground-truth COCO json, or a ``COCO`` object.
        class_id_map: ``{contiguous_id: category_id}``; defaults to categories sorted by id
            (``keras_cvx.data.coco.class_id_map``).
        groups: ``{group_name: [category_id, ...]}``; defaults to LVIS's ``frequency``
            field of the categories (``rare``/``common``/``frequent``) when present.
        mask_stride: stride of predicted masks relative to the padded image.
    """

    def __init__(self, annotation_file, class_id_map=None, groups=None, mask_stride=1):
        self.coco = annotation_file if isinstance(annotation_file, COCO) else load_coco(annotation_file)
        self.class_id_map = dict(class_id_map) if class_id_map is not None else default_class_id_map(self.coco)
        unknown = set(self.class_id_map.values()) - set(self.coco.getCatIds())
        if unknown:
            raise ValueError(f"`class_id_map` maps to category ids not in the annotations: {sorted(unknown)}.")
        if groups is None:
            groups = {}
            for cat in self.coco.loadCats(self.coco.getCatIds()):
                if cat.get("frequency") in _GROUP_NAMES:
                    groups.setdefault(_GROUP_NAMES[cat["frequency"]], []).append(cat["id"])
        self.groups = {name: [int(c) for c in ids] for name, ids in groups.items()}
        self.mask_stride = require_positive_int("mask_stride", mask_stride)
        self.reset()

    def reset(self):
        self._boxes, self._segms, self._image_ids = [], [], set()
        self._with_masks = False  # some update had masks: segm numbers even without a detection

    def update(self, image_info, predictions):
        """Adds one batch. ``image_info`` and ``predictions`` are dicts of tensors/arrays."""
        info = {k: np.asarray(v) for k, v in image_info.items()}
        preds = {_ALIASES.get(k, k): np.asarray(v) for k, v in predictions.items()}
        with_masks = "masks" in preds
        self._with_masks |= with_masks
        for b in range(info["image_id"].shape[0]):
            image_id = int(info["image_id"][b])
            height, width = int(info["height"][b]), int(info["width"][b])
            scale = float(info["scale"][b])
            self._image_ids.add(image_id)
            n = int(preds["num_detections"][b]) if "num_detections" in preds else preds["scores"].shape[1]
            boxes = preds["boxes"][b, :n].astype(np.float64) / scale
            boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
            boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
            scores = preds["scores"][b, :n].astype(np.float64)
            classes = preds["classes"][b, :n].astype(np.int64)
            valid = (classes >= 0) & np.isfinite(scores) & np.isfinite(boxes).all(axis=1)
            valid &= np.array([int(c) in self.class_id_map for c in classes], bool).reshape(-1)
            if with_masks and valid.any():
                masks = self._original_masks(preds["masks"][b, :n][valid], height, width, scale)
            for j, i in enumerate(np.flatnonzero(valid)):
                x1, y1, x2, y2 = boxes[i]
                record = {
                    "image_id": image_id,
                    "category_id": self.class_id_map[int(classes[i])],
                    "score": float(scores[i]),
                }
                self._boxes.append(dict(record, bbox=[x1, y1, x2 - x1, y2 - y1]))
                if with_masks:
                    rle = mask_utils.encode(np.asfortranarray(masks[j]))
                    self._segms.append(dict(record, segmentation=rle))

    def _original_masks(self, masks, height, width, scale):
        """``[n, h', w']`` masks on the stride grid of the padded image -> uint8 ``[n, H, W]``."""
        factor = self.mask_stride / scale
        size = [max(height, int(round(masks.shape[1] * factor))), max(width, int(round(masks.shape[2] * factor)))]
        resized = tf.image.resize(tf.cast(masks, tf.float32)[..., None], size, method="bilinear")
        return (resized.numpy()[:, :height, :width, 0] >= 0.5).astype(np.uint8)

    def result(self):
        """Dict of floats: ``bbox/AP`` ... ``bbox/ARl`` (and ``segm/...`` when the predictions
        had masks), ``bbox/AP/<class>`` per class and ``bbox/AP_<group>`` per group. With no
        detections at all every value is 0."""
        results = {}
        for iou_type, detections in (("bbox", self._boxes), ("segm", self._segms)):
            if iou_type == "segm" and not self._with_masks:
                continue
            results.update(self._evaluate(iou_type, detections))
        return results

    def _evaluate(self, iou_type, detections):
        cat_ids = sorted(self.class_id_map.values())
        names = {c["id"]: c.get("name", str(c["id"])) for c in self.coco.loadCats(cat_ids)}
        if not detections:
            out = {f"{iou_type}/{name}": 0.0 for name in STAT_NAMES}
            out.update({f"{iou_type}/AP/{names[c]}": 0.0 for c in cat_ids})
            out.update({f"{iou_type}/AP_{g}": 0.0 for g in self.groups})
            return out
        with contextlib.redirect_stdout(io.StringIO()):
            dets = self.coco.loadRes([dict(d) for d in detections])
            evaluator = COCOeval(self.coco, dets, iou_type)
            evaluator.params.imgIds = sorted(self._image_ids)
            evaluator.params.catIds = cat_ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        out = {f"{iou_type}/{name}": float(v) for name, v in zip(STAT_NAMES, evaluator.stats)}
        # precision: [iou thresholds, recall, categories, area ranges, max detections]
        precision = evaluator.eval["precision"][:, :, :, 0, -1]
        per_class = {}
        for k, cat_id in enumerate(cat_ids):
            values = precision[:, :, k]
            values = values[values > -1]
            per_class[cat_id] = float(values.mean()) if values.size else -1.0
            out[f"{iou_type}/AP/{names[cat_id]}"] = per_class[cat_id]
        for group, ids in self.groups.items():
            aps = [per_class[c] for c in ids if per_class.get(c, -1.0) >= 0]
            out[f"{iou_type}/AP_{group}"] = float(np.mean(aps)) if aps else -1.0
        return out


class COCOEvaluationCallback(keras.callbacks.Callback):
    """Evaluates ``model.predict_on_batch`` on ``dataset`` every ``every_n_epochs`` epochs
    and adds the results to the epoch logs (keys prefixed with ``val_``).

    Args:
        evaluator: a ``COCOEvaluator``.
        dataset: finite dataset of ``(images, targets)`` with ``targets["image_info"]``.
        every_n_epochs: evaluation period.
    """

    def __init__(self, evaluator, dataset, every_n_epochs=1):
        super().__init__()
        self.evaluator = evaluator
        self.dataset = dataset
        self.every_n_epochs = require_positive_int("every_n_epochs", every_n_epochs)
        self.history = []

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        self.evaluator.reset()
        for images, targets in self.dataset:
            self.evaluator.update(targets["image_info"], self.model.predict_on_batch(images))
        results = self.evaluator.result()
        self.history.append((epoch, results))
        if logs is not None:
            logs.update({f"val_{k}": v for k, v in results.items()})
