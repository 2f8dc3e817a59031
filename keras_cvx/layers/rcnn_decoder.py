"""Faster R-CNN second-stage decoding: class scores, class-specific boxes, class-aware NMS.

Papers: "Fast R-CNN", arXiv 1504.08083 (Sec. 3, per-class NMS), "Faster R-CNN", arXiv
1506.01497; the scores of the classification variants of TSD (arXiv 2003.07540, softmax),
Equalization Loss (arXiv 2003.05176 §3.3, sigmoid, no background logit) and EQL v2 (arXiv
2012.08548, sigmoid with a background column). Per image, for ``R`` RoIs and ``K`` classes::

    softmax:       s[r, j] = softmax(z_r)[j]                     (K + 1 logits, background last)
    sigmoid / eql: s[r, j] = sigmoid(z[r, j])                    (K logits)
    eqlv2:         s[r, j] = sigmoid(z[r, j]) (1 - sigmoid(z[r, K]))   (K + 1 logits)
    box[r, j] = clip(decode(deltas[r, j], roi_r), image)         weights (10, 10, 5, 5)
    the pre_nms_top_k (RoI, class) pairs of highest score with s > score_threshold
    class-aware greedy NMS at iou_threshold (a box suppresses only boxes of its class)
    the max_detections best

Defaults are the Faster R-CNN / TSD test settings: score threshold 0.05, NMS 0.5, 100
detections. Output: the detection contract of every keras_cvx detector: ``boxes`` float32
``[B, D, 4]`` ``xyxy`` pixels clipped to the image, ``scores`` ``[B, D]``, ``classes`` int32
``[B, D]`` (0-based, ``-1`` padding), ``num_detections`` int32 ``[B]``. RoIs marked invalid
(padding proposals) give no detection.

Differences from the reference implementation: mmdet/Detectron2 threshold the ``R x K``
scores and run NMS on all survivors (a variable-length set); here the ``pre_nms_top_k``
(default 5000) highest-scoring pairs are the NMS candidates (static shapes), which can differ
only when more than that many pairs are above the threshold and the 100 kept boxes are not
among the first ``pre_nms_top_k``.
"""

import keras
from keras import ops

from keras_cvx.ops.boxes import BOX_CODER_WEIGHTS, clip_boxes, decode_boxes
from keras_cvx.ops.nms import class_aware_non_max_suppression
from keras_cvx.validation import require_choice, require_positive_int, require_unit_interval

CLASSIFICATION_LOSSES = ("softmax", "sigmoid", "eql", "eqlv2")
"""Classifier variants of the R-CNN box heads: what their logits mean (module docstring)."""


def has_background_column(classification_loss):
    """Whether heads trained with ``classification_loss`` have a background logit (the last)."""
    return classification_loss in ("softmax", "eqlv2")


def class_scores(class_logits, classification_loss):
    """Per-class scores ``[..., K]`` (float32) of the logits of a box head (module docstring).

    Args:
        class_logits: ``[..., K + 1]`` (softmax, eqlv2; background last) or ``[..., K]``
            (sigmoid, eql).
        classification_loss: one of ``CLASSIFICATION_LOSSES``.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.layers.rcnn_decoder import class_scores
    >>> print(np.round(np.asarray(class_scores(np.zeros((1, 3), "float32"), "softmax")), 4))
    [[0.3333 0.3333]]
    """
    require_choice("classification_loss", classification_loss, CLASSIFICATION_LOSSES)
    logits = ops.cast(class_logits, "float32")
    if classification_loss == "softmax":
        return ops.softmax(logits, axis=-1)[..., :-1]
    if classification_loss == "eqlv2":
        return ops.sigmoid(logits[..., :-1]) * (1.0 - ops.sigmoid(logits[..., -1:]))
    return ops.sigmoid(logits)


@keras.saving.register_keras_serializable(package="keras_cvx")
class RCNNDecoder(keras.layers.Layer):
    """Faster R-CNN detections from the box head's outputs (see the module docstring).

    Args:
        classification_loss: how the class logits were trained: ``"softmax"`` (default),
            ``"sigmoid"``, ``"eql"`` or ``"eqlv2"``.
        score_threshold: keep scores ``> score_threshold`` (default 0.05).
        iou_threshold: NMS IoU threshold (default 0.5).
        max_detections: output slots per image (default 100).
        pre_nms_top_k: (RoI, class) candidates of NMS (default 5000).
        box_coder_weights: ``(wx, wy, ww, wh)`` of the deltas (default ``(10, 10, 5, 5)``).

    Call: ``decoder(class_logits [B, R, O], box_deltas [B, R, O, 4], rois [B, R, 4], valid [B, R],
    image_size=(height, width))`` with ``O`` the head's outputs (``K + 1`` or ``K``; deltas of a background
    column are ignored) -> dict ``boxes``, ``scores``, ``classes``, ``num_detections``.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.layers import RCNNDecoder
    >>> logits = np.array([[[4.0, 0.0, 0.0]]], "float32")            # class 0 of K = 2, background last
    >>> out = RCNNDecoder(max_detections=2)(logits, np.zeros((1, 1, 3, 4), "float32"),
    ...                                     np.array([[[2, 2, 12, 12]]], "float32"), np.ones((1, 1), bool),
    ...                                     image_size=(16, 16))
    >>> np.asarray(out["boxes"])[0, 0].tolist(), int(out["classes"][0, 0]), int(out["num_detections"][0])
    ([2.0, 2.0, 12.0, 12.0], 0, 1)
    """

    def __init__(self, classification_loss="softmax", score_threshold=0.05, iou_threshold=0.5, max_detections=100,
                 pre_nms_top_k=5000, box_coder_weights=BOX_CODER_WEIGHTS, **kwargs):
        super().__init__(**kwargs)
        self.classification_loss = require_choice("classification_loss", classification_loss,
                                                  CLASSIFICATION_LOSSES)
        self.score_threshold = require_unit_interval("score_threshold", score_threshold)
        self.iou_threshold = require_unit_interval("iou_threshold", iou_threshold, include_one=True)
        self.max_detections = require_positive_int("max_detections", max_detections)
        self.pre_nms_top_k = require_positive_int("pre_nms_top_k", pre_nms_top_k)
        if len(box_coder_weights) != 4:
            raise ValueError(f"`box_coder_weights` must be 4 numbers, got {box_coder_weights!r}.")
        self.box_coder_weights = tuple(float(w) for w in box_coder_weights)

    def build(self, *shapes):
        pass

    def call(self, class_logits, box_deltas, rois, valid, image_size=None):
        if image_size is None:
            raise ValueError("`image_size` (height, width) must be given to clip the boxes.")
        scores = class_scores(class_logits, self.classification_loss)  # [B, R, K]
        num_rois, num_classes = scores.shape[1], scores.shape[2]
        scores = ops.where(ops.cast(valid, "bool")[..., None], scores, 0.0)
        deltas = ops.cast(box_deltas, "float32")[:, :, :num_classes]  # [B, R, K, 4]
        flat = ops.reshape(scores, (-1, num_rois * num_classes))
        values, index = ops.top_k(flat, min(self.pre_nms_top_k, num_rois * num_classes))
        index = ops.cast(index, "int32")
        roi_index, class_index = index // num_classes, index % num_classes
        candidate_deltas = ops.take_along_axis(ops.reshape(deltas, (-1, num_rois * num_classes, 4)),
                                               index[..., None], axis=1)
        candidate_rois = ops.take_along_axis(ops.cast(rois, "float32"), roi_index[..., None], axis=1)
        boxes = clip_boxes(decode_boxes(candidate_deltas, candidate_rois, self.box_coder_weights), image_size)
        nms_scores = ops.where(values > self.score_threshold, values, 0.0)
        selected, num_detections = class_aware_non_max_suppression(
            boxes, nms_scores, class_index, self.max_detections, self.iou_threshold, 0.0)
        kept = selected >= 0
        pick = ops.maximum(selected, 0)
        return {
            "boxes": ops.where(kept[..., None], ops.take_along_axis(boxes, pick[..., None], axis=1), 0.0),
            "scores": ops.where(kept, ops.take_along_axis(nms_scores, pick, axis=1), 0.0),
            "classes": ops.where(kept, ops.take_along_axis(class_index, pick, axis=1), -1),
            "num_detections": ops.cast(num_detections, "int32"),
        }

    def compute_output_shape(self, class_logits_shape, *args, **kwargs):
        batch, slots = class_logits_shape[0], self.max_detections
        return {"boxes": (batch, slots, 4), "scores": (batch, slots), "classes": (batch, slots),
                "num_detections": (batch,)}

    def get_config(self):
        config = super().get_config()
        config.update(classification_loss=self.classification_loss, score_threshold=self.score_threshold,
                      iou_threshold=self.iou_threshold, max_detections=self.max_detections,
                      pre_nms_top_k=self.pre_nms_top_k, box_coder_weights=list(self.box_coder_weights))
        return config
