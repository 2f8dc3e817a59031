"""NumPy formulations of box coding and IoU for the detection tests, written from the papers'
definitions (Faster R-CNN, arXiv 1506.01497, eq. 2) independently of ``keras_cvx.ops``."""

import math

import numpy as np


def numpy_iou(a, b):
    """IoU matrix ``[len(a), len(b)]`` of ``xyxy`` boxes (0 for an empty union)."""
    a, b = np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[None]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    area = lambda x: np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - iw * ih
    return np.where(union > 0, iw * ih / np.where(union > 0, union, 1), 0.0)


def numpy_encode(boxes, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    boxes, anchors = np.asarray(boxes, np.float64), np.asarray(anchors, np.float64)
    aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    bw, bh = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    return np.stack([weights[0] * ((boxes[..., 0] + bw / 2) - (anchors[..., 0] + aw / 2)) / aw,
                     weights[1] * ((boxes[..., 1] + bh / 2) - (anchors[..., 1] + ah / 2)) / ah,
                     weights[2] * np.log(bw / aw), weights[3] * np.log(bh / ah)], -1)


def numpy_decode(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0), clip=math.log(1000 / 16)):
    deltas, anchors = np.asarray(deltas, np.float64), np.asarray(anchors, np.float64)
    aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    cx = anchors[..., 0] + aw / 2 + deltas[..., 0] / weights[0] * aw
    cy = anchors[..., 1] + ah / 2 + deltas[..., 1] / weights[1] * ah
    w = aw * np.exp(np.minimum(deltas[..., 2] / weights[2], clip))
    h = ah * np.exp(np.minimum(deltas[..., 3] / weights[3], clip))
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
