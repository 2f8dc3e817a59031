"""Anchor boxes and location grids, ``xyxy`` in absolute pixels, float32.

* ``ssd_anchors``: SSD's default boxes as used by NETNet ("Neighbor Erasing and
  Transferring Network for Better Single Shot Object Detection", arXiv 2001.06690; SSD,
  arXiv 1512.02325, eq. 4). Per level ``l`` with feature size ``f``, step ``s``, sizes
  ``m < M`` and aspect ratios ``AR``: centres ``((j + 0.5) s, (i + 0.5) s)``; per cell the
  boxes ``(m, m)``, ``(sqrt(m M), sqrt(m M))``, then for each ``ar``: ``(m sqrt(ar), m / sqrt(ar))``,
  ``(m / sqrt(ar), m sqrt(ar))`` as ``(w, h)``. Order: level, row ``i``, column ``j``, box.
  The reference ports give normalised ``[0, 1]`` coordinates; here they are multiplied by the
  image size. ``clip`` defaults to False, as the configurations of the original Caffe SSD
  (``clip = False`` in ``ssd_pascal.py``/``ssd_coco.py``). ``clip=True`` (or ``"corners"``)
  clamps the corners ``x1, y1, x2, y2`` to the image, which is what Caffe's ``PriorBox`` does
  with ``clip: true``; it changes 2,223 of SSD300's 8,732 priors (every prior that crosses the
  border). It is NOT what the PyTorch ports do: ssd.pytorch and lufficc/SSD clip by default
  but clamp the centre-size form ``(cx, cy, w, h)`` to ``[0, 1]``, which only moves centres
  that lie outside the image (SSD300's 10×10 level has step 32: its last row and column are
  centred at 304) and shrinks priors wider or taller than the image (116 of the 8,732 change
  at 300, 42 of the 24,564 at 512), leaving the others crossing the border;
  ``clip="center_size"`` reproduces that (the two clipped sets differ in 2,221 priors at 300).
* ``fpn_anchors``: Faster R-CNN + FPN anchors (arXiv 1612.03144): one size per level
  (32..512 on P2..P6 at strides 4..64), ratios ``r = h / w`` in ``{0.5, 1, 2}``,
  ``w = size * scale / sqrt(r)``, ``h = size * scale * sqrt(r)``; centres ``(j + offset) s``
  with ``offset = 0`` (Detectron2 / mmdet v2; mmdet v1's ``(s - 1) / 2`` centres and corner
  rounding are not reproduced). Order: level, row, column, ratio, scale.
* ``fcos_locations``: FCOS/CondInst points ``(j s + s // 2, i s + s // 2)`` (arXiv 1904.01355,
  2003.05664), order level, row, column, and the level index of each point.

All depend only on Python values: they are computed once with NumPy and returned as float32
tensors (constants under XLA).
"""

import math

import numpy as np
from keras import ops

from keras_cvx.validation import require_positive

SSD_CONFIGS = {
    300: dict(
        feature_sizes=(38, 19, 10, 5, 3, 1),
        steps=(8, 16, 32, 64, 100, 300),
        min_sizes=(21, 45, 99, 153, 207, 261),
        max_sizes=(45, 99, 153, 207, 261, 315),
        aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    ),
    512: dict(
        feature_sizes=(64, 32, 16, 8, 4, 2, 1),
        steps=(8, 16, 32, 64, 128, 256, 512),
        min_sizes=(20.48, 51.2, 133.12, 215.04, 296.96, 378.88, 460.8),
        max_sizes=(51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72),
        aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    ),
}
"""SSD300 and SSD512 COCO anchor settings (8732 and 24564 boxes)."""

CLIP_MODES = (False, True, "corners", "center_size")
"""Values of ``ssd_anchors``'s ``clip``."""


def _pairs(image_size):
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


def ssd_anchors(image_size=300, feature_sizes=None, steps=None, min_sizes=None, max_sizes=None,
                    aspect_ratios=None, clip=False):
    """SSD anchors (the SSD paper's "default boxes", "priors" in its code) ``[N, 4]``, ``xyxy`` pixels.

    Paper: "SSD: Single Shot MultiBox Detector", W. Liu et al.,
    https://arxiv.org/abs/1512.02325, Sec. 2.2, Eq. 4 (scales and aspect ratios), with the
    COCO settings of the reference ports (``SSD_CONFIGS``), as NETNet
    (https://arxiv.org/abs/2001.06690) uses them. Order: level, row, column, box (module
    docstring).

    Args:
        image_size: side of the square input in pixels (default 300); 300 or 512 selects
            ``SSD_CONFIGS`` for every setting left as None, other sizes need all five.
        feature_sizes, steps, min_sizes, max_sizes, aspect_ratios: per-level settings (one
            entry per level).
        clip: ``False`` (default, Caffe SSD's configurations), ``True`` or ``"corners"`` (clamp
            ``x1, y1, x2, y2`` to ``[0, image_size]``, Caffe ``PriorBox`` with ``clip: true``), or
            ``"center_size"`` (clamp the normalised ``cx, cy, w, h`` to ``[0, 1]``, as
            ssd.pytorch and lufficc/SSD do: only priors centred outside or larger than the image
            change).

    Returns: float32 ``[N, 4]`` (8,732 boxes at 300, 24,564 at 512).

    Example:

    >>> import keras
    >>> from keras_cvx.ops import ssd_anchors
    >>> anchors = ssd_anchors(300)
    >>> tuple(anchors.shape)
    (8732, 4)
    >>> keras.ops.convert_to_numpy(anchors)[0].tolist()   # 38×38 level, cell (0, 0): 21 × 21
    [-6.5, -6.5, 14.5, 14.5]
    >>> keras.ops.convert_to_numpy(ssd_anchors(300, clip="center_size"))[0].tolist()
    [-6.5, -6.5, 14.5, 14.5]
    """
    if clip not in CLIP_MODES:
        raise ValueError(f"`clip` must be one of {CLIP_MODES}, got {clip!r}.")
    config = dict(SSD_CONFIGS.get(image_size, {}))
    given = dict(feature_sizes=feature_sizes, steps=steps, min_sizes=min_sizes, max_sizes=max_sizes,
                 aspect_ratios=aspect_ratios)
    config.update({k: v for k, v in given.items() if v is not None})
    missing = sorted(set(given) - set(config))
    if missing:
        raise ValueError(
            f"`image_size`={image_size!r} has no built-in SSD setting (300 or 512); pass {missing}."
        )
    lengths = {k: len(v) for k, v in config.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"SSD settings must have one entry per level, got lengths {lengths}.")
    boxes = []
    for f, step, m, big, ratios in zip(*(config[k] for k in given)):
        sizes = [(m, m), (math.sqrt(m * big),) * 2]
        for ar in ratios:
            sizes += [(m * math.sqrt(ar), m / math.sqrt(ar)), (m / math.sqrt(ar), m * math.sqrt(ar))]
        wh = np.array(sizes, np.float64)  # [A, 2]
        centres = (np.arange(f, dtype=np.float64) + 0.5) * step
        cy, cx = np.meshgrid(centres, centres, indexing="ij")
        centre = np.stack([cx, cy], -1).reshape(-1, 1, 2)  # [f*f, 1, 2]
        boxes.append(np.concatenate([centre - wh / 2, centre + wh / 2], -1).reshape(-1, 4))
    boxes = np.concatenate(boxes)
    if clip == "center_size":
        centre = np.clip((boxes[:, :2] + boxes[:, 2:]) / 2, 0.0, float(image_size))
        size = np.minimum(boxes[:, 2:] - boxes[:, :2], float(image_size))
        boxes = np.concatenate([centre - size / 2, centre + size / 2], -1)
    elif clip:
        boxes = np.clip(boxes, 0.0, float(image_size))
    return ops.convert_to_tensor(boxes.astype(np.float32))


def _feature_sizes(image_size, strides, feature_sizes):
    height, width = _pairs(image_size)
    if feature_sizes is None:
        return [(math.ceil(height / s), math.ceil(width / s)) for s in strides]
    if len(feature_sizes) != len(strides):
        raise ValueError(f"`feature_sizes` needs one (h, w) per stride, got {feature_sizes!r}.")
    return [_pairs(f) for f in feature_sizes]


def fpn_anchors(image_size, strides=(4, 8, 16, 32, 64), sizes=(32, 64, 128, 256, 512),
                aspect_ratios=(0.5, 1.0, 2.0), scales=(1.0,), offset=0.0, feature_sizes=None):
    """Faster R-CNN + FPN anchors over all levels, ``xyxy`` pixels.

    Paper: "Feature Pyramid Networks for Object Detection", T.-Y. Lin et al.,
    https://arxiv.org/abs/1612.03144 (one anchor size per level, 32..512 on P2..P6,
    ratios {1:2, 1:1, 2:1}); ``w = size · scale / sqrt(r)``, ``h = size · scale · sqrt(r)`` for
    ``r = h / w``, centres ``(j + offset) s`` (Detectron2 / mmdet v2). Order: level, row,
    column, ratio, scale.

    Args:
        image_size: ``(height, width)`` or an int; the map of stride ``s`` is
            ``ceil(height / s) × ceil(width / s)`` unless ``feature_sizes`` is given.
        strides: per-level strides (default ``(4, 8, 16, 32, 64)``).
        sizes: per-level anchor sizes (default ``(32, 64, 128, 256, 512)``).
        aspect_ratios: ratios ``r = h / w`` (default ``(0.5, 1.0, 2.0)``).
        scales: size multipliers (default ``(1.0,)``).
        offset: centre offset in strides (default 0.0).
        feature_sizes: optional ``(h, w)`` per level.

    Returns: float32 ``[N, 4]``, ``N = Σ_l H_l W_l · len(aspect_ratios) · len(scales)``.

    Example:

    >>> import keras
    >>> from keras_cvx.ops import fpn_anchors
    >>> anchors = fpn_anchors((64, 64), strides=(16, 32), sizes=(32, 64))
    >>> tuple(anchors.shape)                           # (4·4 + 2·2) cells × 3 ratios
    (60, 4)
    >>> keras.ops.convert_to_numpy(anchors)[1].tolist()   # stride 16, cell (0, 0), ratio 1
    [-16.0, -16.0, 16.0, 16.0]
    """
    if len(sizes) != len(strides):
        raise ValueError(f"`sizes` needs one entry per stride {strides}, got {sizes!r}.")
    for r in aspect_ratios:
        require_positive("aspect_ratios", r)
    for s in scales:
        require_positive("scales", s)
    boxes = []
    for (fh, fw), stride, size in zip(_feature_sizes(image_size, strides, feature_sizes), strides, sizes):
        wh = np.array([(size * s / math.sqrt(r), size * s * math.sqrt(r)) for r in aspect_ratios for s in scales])
        cy, cx = np.meshgrid((np.arange(fh) + offset) * stride, (np.arange(fw) + offset) * stride, indexing="ij")
        centre = np.stack([cx, cy], -1).reshape(-1, 1, 2).astype(np.float64)
        boxes.append(np.concatenate([centre - wh / 2, centre + wh / 2], -1).reshape(-1, 4))
    return ops.convert_to_tensor(np.concatenate(boxes).astype(np.float32))


def fcos_locations(image_size, strides=(8, 16, 32, 64, 128), feature_sizes=None):
    """FCOS points ``(j s + s // 2, i s + s // 2)`` of every level, and each point's level index.

    Papers: "FCOS: Fully Convolutional One-Stage Object Detection", Z. Tian et al.,
    https://arxiv.org/abs/1904.01355; used by CondInst
    (https://arxiv.org/abs/2003.05664) as AdelaiDet's ``compute_locations``. Order: level, row,
    column.

    Args:
        image_size: ``(height, width)`` or an int.
        strides: per-level strides (default ``(8, 16, 32, 64, 128)``, P3..P7).
        feature_sizes: optional ``(h, w)`` per level (default ``ceil(size / stride)``).

    Returns: ``(locations, levels)``: float32 ``[N, 2]`` as ``(x, y)`` pixels and int32 ``[N]``.

    Example:

    >>> import keras
    >>> from keras_cvx.ops import fcos_locations
    >>> locations, levels = fcos_locations((32, 32), strides=(8, 16))
    >>> tuple(locations.shape), keras.ops.convert_to_numpy(locations)[:2].tolist()
    ((20, 2), [[4.0, 4.0], [12.0, 4.0]])
    >>> keras.ops.convert_to_numpy(levels)[[0, 15, 16]].tolist()
    [0, 0, 1]
    """
    points, levels = [], []
    for level, ((fh, fw), stride) in enumerate(zip(_feature_sizes(image_size, strides, feature_sizes), strides)):
        y, x = np.meshgrid(np.arange(fh) * stride + stride // 2, np.arange(fw) * stride + stride // 2, indexing="ij")
        points.append(np.stack([x, y], -1).reshape(-1, 2))
        levels.append(np.full(fh * fw, level))
    return (ops.convert_to_tensor(np.concatenate(points).astype(np.float32)),
            ops.convert_to_tensor(np.concatenate(levels).astype(np.int32)))
