"""FCOS / CondInst detection decoding: thresholds on class x center-ness, per-level top-k,
box decoding from the location distances, class-aware NMS, the best detections.

Papers: "FCOS: Fully Convolutional One-Stage Object Detection", arXiv 1904.01355 (Sec. 3.3,
inference with center-ness), as CondInst runs it ("Conditional Convolutions for Instance
Segmentation", arXiv 2003.05664; AdelaiDet ``FCOSOutputs.forward_for_single_feature_map`` with
``THRESH_WITH_CTR = True``). Per image::

    s = sigmoid(class_logits) * sigmoid(centerness_logits)        [N, K]
    per level: the pre_nms_top_k (location, class) pairs of largest s   (one location may
               give several classes); pairs with s <= score_threshold are dropped
    box = (x - l, y - t, x + r, y + b)      (x, y) the location, (l, t, r, b) in pixels
    score = sqrt(s)
    class-aware greedy NMS (IoU > iou_threshold suppressed), the max_detections best

Output (the detection contract of every keras_cvx detector): ``boxes`` float32
``[B, D, 4]`` ``xyxy`` pixels, ``scores`` ``[B, D]``, ``classes`` int32 ``[B, D]`` (0-based,
``-1`` padding), ``num_detections`` int32 ``[B]``, and ``locations`` int32 ``[B, D]``: the index
of the location each detection comes from (``-1`` padding), so that per-location outputs
(CondInst's dynamic parameters) can be gathered. Boxes are not clipped (the detector clips).
Computed in float32 under every dtype policy. The top-k, threshold, NMS and gather are
``keras_cvx.layers.dense_detections.dense_detections``, shared with ``RetinaNetDecoder``.

Differences from the reference implementation: AdelaiDet keeps every detection whose score
reaches the 100th best (ties can keep a few more than 100); here exactly ``max_detections``
slots. NMS is ``keras_cvx.ops.nms.class_aware_non_max_suppression`` (exact per-class NMS, no
coordinate offsets).
"""

import keras
from keras import ops

from keras_cvx.layers.dense_detections import dense_detections
from keras_cvx.validation import require_positive_int, require_unit_interval


@keras.saving.register_keras_serializable(package="keras_cvx")
class FCOSDecoder(keras.layers.Layer):
    """FCOS/CondInst inference decoding (see the module docstring).

    Args:
        score_threshold: keep class x center-ness ``> score_threshold`` (default 0.05).
        pre_nms_top_k: candidates per level before NMS (default 1000).
        iou_threshold: NMS IoU threshold (default 0.6).
        max_detections: output slots per image (default 100).

    Call: ``decoder(class_logits [B, N, K], box_distances [B, N, 4], centerness_logits [B, N],
    locations [N, 2], level_sizes=None)`` with ``box_distances`` the ``(l, t, r, b)`` in pixels
    (the head's regression times the stride), ``locations`` ``(x, y)`` pixels and
    ``level_sizes`` the number of locations of each level (Python ints; ``None``: one level)
    -> dict ``boxes``, ``scores``, ``classes``, ``num_detections``, ``locations``.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.layers import FCOSDecoder
    >>> logits = np.full((1, 2, 1), -9.0, "float32"); logits[0, 1, 0] = 9.0
    >>> out = FCOSDecoder(max_detections=2)(logits, np.full((1, 2, 4), 4.0, "float32"),
    ...                                     np.full((1, 2), 9.0, "float32"),
    ...                                     np.array([[4, 4], [12, 4]], "float32"))
    >>> np.asarray(out["boxes"])[0, 0].tolist(), int(out["locations"][0, 0]), int(out["num_detections"][0])
    ([8.0, 0.0, 16.0, 8.0], 1, 1)
    """

    def __init__(self, score_threshold=0.05, pre_nms_top_k=1000, iou_threshold=0.6, max_detections=100, **kwargs):
        super().__init__(**kwargs)
        self.score_threshold = require_unit_interval("score_threshold", score_threshold)
        self.pre_nms_top_k = require_positive_int("pre_nms_top_k", pre_nms_top_k)
        self.iou_threshold = require_unit_interval("iou_threshold", iou_threshold, include_one=True)
        self.max_detections = require_positive_int("max_detections", max_detections)

    def build(self, *shapes):
        pass

    def call(self, class_logits, box_distances, centerness_logits, locations, level_sizes=None):
        scores = ops.sigmoid(ops.cast(class_logits, "float32")) * ops.sigmoid(
            ops.cast(centerness_logits, "float32"))[..., None]
        points = ops.cast(locations, "float32")
        distances = ops.cast(box_distances, "float32")

        def boxes_of(index):  # [B, C] candidate locations -> [B, C, 4] boxes
            at = ops.take(points, index, axis=0)
            d = ops.take_along_axis(distances, ops.repeat(index[..., None], 4, axis=-1), axis=1)
            return ops.concatenate([at - d[..., :2], at + d[..., 2:]], axis=-1)

        # sqrt is monotonic: the threshold applies to s itself, the output score is sqrt(s)
        return dense_detections(scores, boxes_of, level_sizes, self.pre_nms_top_k, self.score_threshold,
                                self.iou_threshold, self.max_detections, score_fn=ops.sqrt)

    def compute_output_shape(self, class_logits_shape, *args, **kwargs):
        batch, slots = class_logits_shape[0], self.max_detections
        return {"boxes": (batch, slots, 4), "scores": (batch, slots), "classes": (batch, slots),
                "num_detections": (batch,), "locations": (batch, slots)}

    def get_config(self):
        config = super().get_config()
        config.update(score_threshold=self.score_threshold, pre_nms_top_k=self.pre_nms_top_k,
                      iou_threshold=self.iou_threshold, max_detections=self.max_detections)
        return config
