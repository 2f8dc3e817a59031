"""RetinaNet detection decoding: sigmoid scores, per-level top-k (anchor, class) candidates,
boxes decoded from their anchors, a score threshold, class-aware NMS, the best detections.

Paper: "Focal Loss for Dense Object Detection", T.-Y. Lin et al., arXiv 1708.02002 (Sec. 4.1
"Inference": box predictions decoded from at most the 1k top-scoring predictions per FPN level
after thresholding the detector confidence at 0.05; the top predictions of all levels merged
and NMS with threshold 0.5 applied), as Detectron2 runs it (``RetinaNet.inference_single_image``:
``score > 0.05`` strictly, ``topk_candidates = 1000``, ``batched_nms`` 0.5, 100 detections).
Per image, with ``N = Σ_l H_l W_l A`` anchors in the head's order::

    s = sigmoid(class_logits)                                   [N, K]
    per level: the pre_nms_top_k (anchor, class) pairs of largest s; s <= score_threshold dropped
    box = decode_boxes(deltas of the anchor, anchor, box_weights)   Faster R-CNN eq. 2, t_w/t_h
                                                                    clamped at log(1000/16)
    class-aware greedy NMS (IoU > iou_threshold suppressed), the max_detections best

The top-k, threshold, NMS and gather are ``keras_cvx.layers.dense_detections.dense_detections``
(shared with ``FCOSDecoder``). Output (the detection contract of every keras_cvx detector):
``boxes`` float32 ``[B, D, 4]`` ``xyxy`` pixels (not clipped: the detector clips), ``scores``
``[B, D]``, ``classes`` int32 ``[B, D]`` (0-based, ``-1`` padding), ``num_detections`` int32
``[B]``, and ``anchors`` int32 ``[B, D]``: the index into ``N`` of each detection's anchor (``-1``
padding), so that per-anchor outputs (PointINS's instance-aware weights, arXiv 2003.06148) can
be gathered. Computed in float32 under every dtype policy.

Differences from the reference implementation: exactly ``max_detections`` slots, padded;
NMS is ``keras_cvx.ops.nms.class_aware_non_max_suppression`` (exact per-class NMS, no
coordinate offsets).
"""

import keras
from keras import ops

from keras_cvx.layers.dense_detections import dense_detections
from keras_cvx.ops.boxes import decode_boxes
from keras_cvx.validation import require_positive, require_positive_int, require_unit_interval


@keras.saving.register_keras_serializable(package="keras_cvx")
class RetinaNetDecoder(keras.layers.Layer):
    """RetinaNet inference decoding (see the module docstring).

    Paper: "Focal Loss for Dense Object Detection", T.-Y. Lin et al.,
    https://arxiv.org/abs/1708.02002, Sec. 4.1 ("Inference"); Detectron2's
    ``inference_single_image``.

    Args:
        score_threshold: keep ``sigmoid(logit) > score_threshold`` (default 0.05).
        pre_nms_top_k: candidates per level before NMS (default 1000).
        iou_threshold: NMS IoU threshold (default 0.5).
        max_detections: output slots per image (default 100).
        box_weights: ``(w_x, w_y, w_w, w_h)`` the deltas were encoded with (default
            ``(1, 1, 1, 1)``, as ``RetinaNetLabelEncoder``).

    Call: ``decoder(class_logits [B, N, K], box_regression [B, N, 4], anchors [N, 4],
    level_sizes=None)`` with ``box_regression`` the deltas of the head, ``anchors`` ``xyxy``
    pixels in the head's order (``FPNAnchorGenerator``) and ``level_sizes`` the number of
    anchors of each level, ``H_l W_l A`` (Python ints; ``None``: one level) -> dict ``boxes``,
    ``scores``, ``classes``, ``num_detections``, ``anchors``.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.layers.retinanet_decoder import RetinaNetDecoder
    >>> anchors = np.array([[0, 0, 8, 8], [8, 0, 16, 8]], "float32")
    >>> logits = np.full((1, 2, 1), -9.0, "float32"); logits[0, 1, 0] = 9.0
    >>> deltas = np.zeros((1, 2, 4), "float32"); deltas[0, 1, 0] = 0.5    # shift by half a width
    >>> out = RetinaNetDecoder(max_detections=2)(logits, deltas, anchors)
    >>> np.asarray(out["boxes"])[0, 0].tolist(), int(out["anchors"][0, 0]), int(out["num_detections"][0])
    ([12.0, 0.0, 20.0, 8.0], 1, 1)
    """

    def __init__(self, score_threshold=0.05, pre_nms_top_k=1000, iou_threshold=0.5, max_detections=100,
                 box_weights=(1.0, 1.0, 1.0, 1.0), **kwargs):
        super().__init__(**kwargs)
        self.score_threshold = require_unit_interval("score_threshold", score_threshold)
        self.pre_nms_top_k = require_positive_int("pre_nms_top_k", pre_nms_top_k)
        self.iou_threshold = require_unit_interval("iou_threshold", iou_threshold, include_one=True)
        self.max_detections = require_positive_int("max_detections", max_detections)
        if isinstance(box_weights, str) or not hasattr(box_weights, "__len__") or len(box_weights) != 4:
            raise ValueError(f"`box_weights` must be 4 positive numbers (wx, wy, ww, wh), got {box_weights!r}.")
        self.box_weights = tuple(require_positive("box_weights", w) for w in box_weights)

    def build(self, *shapes):
        pass

    def call(self, class_logits, box_regression, anchors, level_sizes=None):
        logits = ops.cast(class_logits, "float32")
        deltas = ops.cast(box_regression, "float32")
        anchors = ops.cast(anchors, "float32")
        num_anchors = logits.shape[1]
        if tuple(deltas.shape[1:]) != (num_anchors, 4):
            raise ValueError(f"`box_regression` must be [B, {num_anchors}, 4] like `class_logits` "
                             f"{tuple(logits.shape)}, got {tuple(deltas.shape)}.")
        if tuple(anchors.shape) != (num_anchors, 4):
            raise ValueError(f"`anchors` must be [{num_anchors}, 4] (one per row of `class_logits`), "
                             f"got {tuple(anchors.shape)}.")

        def boxes_of(index):  # [B, C] candidate anchors -> [B, C, 4] decoded boxes
            picked = ops.take_along_axis(deltas, ops.repeat(index[..., None], 4, axis=-1), axis=1)
            return decode_boxes(picked, ops.take(anchors, index, axis=0), self.box_weights)

        out = dense_detections(ops.sigmoid(logits), boxes_of, level_sizes, self.pre_nms_top_k, self.score_threshold,
                               self.iou_threshold, self.max_detections)
        out["anchors"] = out.pop("locations")
        return out

    def compute_output_shape(self, class_logits_shape, *args, **kwargs):
        batch, slots = class_logits_shape[0], self.max_detections
        return {"boxes": (batch, slots, 4), "scores": (batch, slots), "classes": (batch, slots),
                "num_detections": (batch,), "anchors": (batch, slots)}

    def get_config(self):
        config = super().get_config()
        config.update(score_threshold=self.score_threshold, pre_nms_top_k=self.pre_nms_top_k,
                      iou_threshold=self.iou_threshold, max_detections=self.max_detections,
                      box_weights=list(self.box_weights))
        return config
