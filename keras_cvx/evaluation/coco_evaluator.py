"""COCO evaluation with pycocotools: the 12 COCOeval numbers for ``bbox`` (and ``segm``),
per-class AP and AP of class groups (LVIS's rare/common/frequent), from padded predictions.

Two kinds of predictions are accepted, told apart by their names (one dict holds one kind;
mixing them is a ``ValueError``):

- ``model.predict_step`` outputs (the detection contract of every model here, padded, static
  shapes): ``boxes`` float32 ``[B, N, 4]`` ``xyxy`` pixels in the resized/padded image,
  ``scores`` ``[B, N]``, ``classes`` int32 ``[B, N]`` contiguous ids (``-1`` = padding),
  ``num_detections`` ``[B]`` and optionally ``masks`` ``[B, N, H / mask_stride, W / mask_stride]``
  (probabilities or 0/1, thresholded at 0.5). ``image_info`` is ``targets["image_info"]`` of
  ``keras_cvx.data.coco`` (``image_id``, original ``height``/``width``, ``scale``): boxes are
  divided by ``scale`` and clipped to the original image; masks are resized by
  ``mask_stride / scale`` (bilinear) and cropped to it.
- SavedModel outputs (``keras_cvx.export.saved_model``, TF Model Garden's names):
  ``detection_boxes`` ``[B, N, 4]`` ``[ymin, xmin, ymax, xmax]`` normalised to ``[0, 1]`` by
  the original image's height and width (``served_box_format="normalized"``, the export's
  default) or in original-image pixels (``"pixels"``, exported with
  ``normalized_coordinates=False``), ``detection_scores`` ``[B, N]``, ``detection_classes``
  float32 ``[B, N]`` (rounded to int; ``-1`` = padding), ``num_detections`` ``[B]`` and
  optionally ``detection_masks`` 0/1 ``[B, N, max H, max W]`` at the original resolution,
  zero-padded to the batch's largest image (the export's ``mask_resolution="auto"`` for
  full-image masks, or ``"original"``): each image's masks are cropped to
  ``[:height, :width]``, not resized; masks of another size (``mask_resolution="model"``) are
  refused. ``image_info`` needs ``image_id`` and the original ``height``/``width`` (``scale``
  is not used); the served ``image_info`` output, if passed along, is ignored.

``update`` checks the whole batch before it keeps anything (required keys, equal batch sizes,
image ids present in the annotations, served mask sizes) and raises a ``ValueError`` that
names what is wrong, so a bad batch leaves the evaluator as it was.

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
from keras_cvx.validation import require_choice, require_positive_int

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# SavedModel output name -> predict_step name (keras_cvx.export.saved_model)
_SERVED_NAMES = {
    "detection_boxes": "boxes",
    "detection_scores": "scores",
    "detection_classes": "classes",
    "detection_masks": "masks",
}
SERVED_BOX_FORMATS = ("normalized", "pixels")
_GROUP_NAMES = {"r": "rare", "c": "common", "f": "frequent"}


class COCOEvaluator:
    """Accumulates predictions with ``update`` and evaluates them with ``result``.

    ``update`` takes ``predict_step`` outputs (``boxes`` ...) or SavedModel outputs
    (``detection_boxes`` ...); see the module docstring for both contracts.

    Args:
        annotation_file: path of the ground-truth COCO json, or a ``COCO`` object.
        class_id_map: ``{contiguous_id: category_id}``; defaults to categories sorted by id
            (``keras_cvx.data.coco.class_id_map``).
        groups: ``{group_name: [category_id, ...]}``; defaults to LVIS's ``frequency``
            field of the categories (``rare``/``common``/``frequent``) when present.
        mask_stride: stride of ``predict_step`` masks relative to the padded image.
        served_box_format: how served ``detection_boxes`` were exported: ``"normalized"``
            (default, ``export_saved_model(normalized_coordinates=True)``): ``[ymin, xmin,
            ymax, xmax]`` in ``[0, 1]`` of the original image's height/width; ``"pixels"``
            (``normalized_coordinates=False``): the same order in original-image pixels.
            Not used for ``predict_step`` outputs.
    """

    def __init__(self, annotation_file, class_id_map=None, groups=None, mask_stride=1,
                 served_box_format="normalized"):
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
        self.served_box_format = require_choice("served_box_format", served_box_format, SERVED_BOX_FORMATS)
        self.reset()

    def reset(self):
        self._boxes, self._segms, self._image_ids = [], [], set()
        self._with_masks = False  # some update had masks: segm numbers even without a detection

    def update(self, image_info, predictions):
        """Adds one batch. ``image_info`` and ``predictions`` are dicts of tensors/arrays.

        Raises ``ValueError`` (and keeps nothing of the batch) when the names mix both
        contracts, a required key is missing, batch sizes differ, an ``image_id`` is not in
        the annotations or served masks are smaller than their images."""
        preds, served = _canonical(predictions)
        info = {k: np.asarray(image_info[k]) for k in ("image_id", "height", "width", "scale") if k in image_info}
        self._check_batch(info, preds, served)
        boxes_out, segms_out = [], []
        for b in range(info["image_id"].shape[0]):
            image_id = int(info["image_id"][b])
            height, width = int(info["height"][b]), int(info["width"][b])
            n = int(preds["num_detections"][b]) if "num_detections" in preds else preds["scores"].shape[1]
            boxes = preds["boxes"][b, :n].astype(np.float64)
            classes = preds["classes"][b, :n].astype(np.float64)
            if served:
                if self.served_box_format == "normalized":
                    boxes = boxes * np.array([height, width, height, width], np.float64)
                boxes = boxes[:, [1, 0, 3, 2]]  # [ymin, xmin, ymax, xmax] -> xyxy
            else:
                boxes = boxes / float(info["scale"][b])
            boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
            boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
            scores = preds["scores"][b, :n].astype(np.float64)
            classes = np.where(np.isfinite(classes), np.rint(classes), -1).astype(np.int64)
            valid = (classes >= 0) & np.isfinite(scores) & np.isfinite(boxes).all(axis=1)
            valid &= np.array([int(c) in self.class_id_map for c in classes], bool).reshape(-1)
            if "masks" in preds and valid.any():
                masks = preds["masks"][b, :n][valid]
                if served:  # already 0/1 at the original resolution, padded to the batch's largest
                    masks = (masks[:, :height, :width] >= 0.5).astype(np.uint8)
                else:
                    masks = self._original_masks(masks, height, width, float(info["scale"][b]))
            for j, i in enumerate(np.flatnonzero(valid)):
                x1, y1, x2, y2 = boxes[i]
                record = {
                    "image_id": image_id,
                    "category_id": self.class_id_map[int(classes[i])],
                    "score": float(scores[i]),
                }
                boxes_out.append(dict(record, bbox=[x1, y1, x2 - x1, y2 - y1]))
                if "masks" in preds:
                    rle = mask_utils.encode(np.asfortranarray(masks[j]))
                    segms_out.append(dict(record, segmentation=rle))
        self._with_masks |= "masks" in preds
        self._image_ids.update(int(i) for i in info["image_id"])
        self._boxes.extend(boxes_out)
        self._segms.extend(segms_out)

    def _check_batch(self, info, preds, served):
        """``ValueError`` naming what is wrong with the batch; checks everything before
        ``update`` keeps anything."""
        names = {v: k for k, v in _SERVED_NAMES.items()} if served else {}
        needed_info = ("image_id", "height", "width") + (() if served else ("scale",))
        missing = [f"image_info[{k!r}]" for k in needed_info if k not in info]
        missing += [f"predictions[{names.get(k, k)!r}]" for k in ("boxes", "scores", "classes") if k not in preds]
        if missing:
            raise ValueError(f"COCOEvaluator.update: missing {', '.join(missing)}.")
        sizes = {f"image_info[{k!r}]": v.shape[0] if v.ndim else None for k, v in info.items()}
        sizes.update({f"predictions[{names.get(k, k)!r}]": v.shape[0] if v.ndim else None for k, v in preds.items()})
        if len(set(sizes.values())) != 1 or None in sizes.values():
            raise ValueError(f"COCOEvaluator.update: every array must be [B, ...] with the same B, got B = {sizes}.")
        unknown = sorted({int(i) for i in info["image_id"]} - set(self.coco.imgs))
        if unknown:
            raise ValueError(
                f"COCOEvaluator.update: this batch has image_id {', '.join(map(str, unknown))}, not in the "
                "annotations; nothing of the batch was added."
            )
        if served and "masks" in preds:
            masks = preds["masks"]
            largest = (int(info["height"].max()), int(info["width"].max()))
            if masks.ndim != 4 or masks.shape[2] < largest[0] or masks.shape[3] < largest[1]:
                raise ValueError(
                    f"COCOEvaluator.update: served `detection_masks` {masks.shape} must be [B, N, H, W] at the "
                    f"original resolution (at least {largest[0]}x{largest[1]} for this batch): export with "
                    "mask_resolution='auto' (full-image masks) or 'original', not 'model'."
                )

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


def _canonical(predictions):
    """``(predictions with predict_step names as NumPy arrays, served)``; ``served`` when the
    SavedModel names (``detection_*``) are used. Mixing both kinds is a ``ValueError``."""
    served = sorted(k for k in predictions if k in _SERVED_NAMES)
    plain = sorted(k for k in predictions if k in _SERVED_NAMES.values())
    if served and plain:
        raise ValueError(
            f"COCOEvaluator.update: `predictions` mixes SavedModel output names {served} with predict_step "
            f"names {plain}; pass one kind (they differ in box format and frame)."
        )
    keep = set(_SERVED_NAMES) | set(_SERVED_NAMES.values()) | {"num_detections"}
    preds = {_SERVED_NAMES.get(k, k): np.asarray(v) for k, v in predictions.items() if k in keep}
    return preds, bool(served)


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
