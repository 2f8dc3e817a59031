"""SSD detection decoding: softmax scores, box decoding, per-class top-k and class-aware NMS.

Paper: "SSD: Single Shot MultiBox Detector", W. Liu et al., arXiv 1512.02325 (Sec. 2.1,
inference), as used by NETNet ("Neighbor Erasing and Transferring Network for Better Single
Shot Object Detection", Y. Li et al., CVPR 2020, arXiv 2001.06690, Sec. 4 inference settings).
Reusable by every detector whose head gives per-anchor box deltas and softmax logits with
background at index 0.

For each image with anchors ``a_n`` (``xyxy`` pixels), deltas ``t_n`` and logits ``z_n``:

    p_n = softmax(z_n)[1:]                          K object-class scores (background dropped)
    b_n = decode(t_n, a_n; weights (10, 10, 5, 5))  SSD variances 0.1/0.2, ops.boxes.decode_boxes
    per class k: the ``pre_nms_top_k`` anchors of highest p_{n,k}
    greedy NMS within each class (IoU > ``iou_threshold`` suppressed), only p > ``score_threshold``
    the ``max_detections`` best survivors over all classes, in descending score order

Output (the detection contract of every keras_cvx detector): ``boxes`` float32
``[B, max_detections, 4]`` ``xyxy`` pixels of the model input, ``scores`` float32
``[B, max_detections]``, ``classes`` int32 ``[B, max_detections]`` 0-based object class ids
(the logit index minus one), ``num_detections`` int32 ``[B]``. Padding rows (after
``num_detections``) hold zero boxes and scores and class ``-1``.

Caffe SSD does the same with ``top_k=400`` per class and ``keep_top_k=200``; our default
``max_detections=100`` is lufficc/SSD's and COCO's ``maxDets``. Class-aware greedy NMS over
the merged per-class candidates (``ops.nms.class_aware_non_max_suppression``) selects exactly
per-class NMS followed by a merge by score, with static shapes; it runs image by image
(``keras.ops.map``) so that the batch size may be unknown (serving signatures). Decoded boxes are not
clipped here (``SSDNet.predict_step`` clips them to the image). Everything is float32 whatever the
dtype policy.
"""

import keras
from keras import ops

from keras_cvx.ops.boxes import BOX_CODER_WEIGHTS, decode_boxes
from keras_cvx.ops.nms import class_aware_non_max_suppression
from keras_cvx.validation import require_positive_int, require_unit_interval


@keras.saving.register_keras_serializable(package="keras_cvx")
class SSDDecoder(keras.layers.Layer):
    """Turns SSD head outputs into padded detections: softmax, box decoding, top-k, class-aware NMS.

    Paper: "SSD: Single Shot MultiBox Detector", W. Liu et al., https://arxiv.org/abs/1512.02325,
    Sec. 2.1 (inference) and Eq. 2 (box coding); the settings of Caffe SSD and lufficc/SSD.
    Per image: scores ``softmax(z)[1:]`` (background, index 0, dropped), boxes decoded from the
    deltas relative to the anchors, the ``pre_nms_top_k`` best anchors per class, greedy NMS
    within each class, and the ``max_detections`` best survivors in descending score order
    (module docstring).

    Args:
        score_threshold: keep class scores ``> score_threshold`` (default 0.01, SSD's).
        iou_threshold: NMS IoU threshold (default 0.45, SSD's).
        pre_nms_top_k: candidates per class before NMS (default 400, Caffe SSD's; at most the
            number of anchors is used).
        max_detections: output slots per image (default 100, lufficc/SSD's and COCO's
            ``maxDets``).
        box_weights: delta coding weights ``(w_x, w_y, w_w, w_h)``, the inverse SSD variances
            (default ``(10, 10, 5, 5)``).

    Call: ``decoder(box_regression [B, N, 4], class_logits [B, N, K + 1], anchors [N, 4])`` ->
    dict of ``boxes`` float32 ``[B, D, 4]`` (``xyxy`` pixels, not clipped), ``scores`` float32 ``[B, D]``,
    ``classes`` int32 ``[B, D]`` (0-based object classes, -1 in padding rows) and
    ``num_detections`` int32 ``[B]``, with ``D = max_detections``.

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.layers import SSDDecoder
    >>> anchors = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], "float32")
    >>> deltas = np.zeros((1, 2, 4), "float32")                          # boxes = anchors
    >>> logits = np.log(np.array([[[0.1, 0.9], [0.7, 0.3]]], "float32"))  # background first
    >>> out = SSDDecoder(max_detections=3)(deltas, logits, anchors)
    >>> out = {name: keras.ops.convert_to_numpy(value) for name, value in out.items()}
    >>> int(out["num_detections"][0]), out["classes"][0].tolist()
    (2, [0, 0, -1])
    >>> out["boxes"][0].tolist(), [round(float(s), 2) for s in out["scores"][0]]
    ([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0], [0.0, 0.0, 0.0, 0.0]], [0.9, 0.3, 0.0])
    """

    def __init__(self, score_threshold=0.01, iou_threshold=0.45, pre_nms_top_k=400, max_detections=100,
                 box_weights=BOX_CODER_WEIGHTS, **kwargs):
        super().__init__(**kwargs)
        self.score_threshold = require_unit_interval("score_threshold", score_threshold)
        self.iou_threshold = require_unit_interval("iou_threshold", iou_threshold, include_one=True)
        self.pre_nms_top_k = require_positive_int("pre_nms_top_k", pre_nms_top_k)
        self.max_detections = require_positive_int("max_detections", max_detections)
        if len(box_weights) != 4 or any(not float(w) > 0 for w in box_weights):
            raise ValueError(f"`box_weights` must be 4 positive numbers, got {box_weights!r}.")
        self.box_weights = tuple(float(w) for w in box_weights)

    def build(self, box_regression_shape, class_logits_shape, anchors_shape=None):
        if len(box_regression_shape) != 3 or box_regression_shape[-1] != 4:
            raise ValueError(f"`box_regression` must be [B, N, 4], got shape {box_regression_shape}.")
        if len(class_logits_shape) != 3 or class_logits_shape[-1] is None or class_logits_shape[-1] < 2:
            raise ValueError(
                f"`class_logits` must be [B, N, K + 1] with the background first (K >= 1), got shape {class_logits_shape}."
            )

    def call(self, box_regression, class_logits, anchors):
        logits = ops.cast(class_logits, "float32")
        num_anchors, num_classes = logits.shape[1], logits.shape[2] - 1
        boxes = decode_boxes(box_regression, anchors, self.box_weights)  # [B, N, 4]
        scores = ops.transpose(ops.softmax(logits, axis=-1)[..., 1:], (0, 2, 1))  # [B, K, N]
        top_k = min(self.pre_nms_top_k, num_anchors)
        top_scores, top_index = ops.top_k(scores, top_k)  # [B, K, k]
        candidates = num_classes * top_k
        top_scores = ops.reshape(top_scores, (-1, candidates))
        top_index = ops.reshape(top_index, (-1, candidates))
        top_boxes = ops.take_along_axis(boxes, ops.repeat(top_index[..., None], 4, axis=-1), axis=1)
        top_classes = ops.repeat(ops.arange(num_classes, dtype="int32"), top_k)  # [K k]

        def suppress(image):
            boxes_i, scores_i = image
            return class_aware_non_max_suppression(
                boxes_i, scores_i, top_classes, self.max_detections, self.iou_threshold, self.score_threshold
            )

        selected, num_detections = ops.map(suppress, (top_boxes, top_scores))
        valid = selected >= 0
        index = ops.maximum(selected, 0)
        out_boxes = ops.take_along_axis(top_boxes, ops.repeat(index[..., None], 4, axis=-1), axis=1)
        out_classes = ops.take(top_classes, index)
        return {
            "boxes": ops.where(valid[..., None], out_boxes, 0.0),
            "scores": ops.where(valid, ops.take_along_axis(top_scores, index, axis=1), 0.0),
            "classes": ops.where(valid, out_classes, -1),
            "num_detections": num_detections,
        }

    def compute_output_shape(self, box_regression_shape, class_logits_shape, anchors_shape=None):
        batch = box_regression_shape[0]
        return {
            "boxes": (batch, self.max_detections, 4),
            "scores": (batch, self.max_detections),
            "classes": (batch, self.max_detections),
            "num_detections": (batch,),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            score_threshold=self.score_threshold,
            iou_threshold=self.iou_threshold,
            pre_nms_top_k=self.pre_nms_top_k,
            max_detections=self.max_detections,
            box_weights=self.box_weights,
        )
        return config
