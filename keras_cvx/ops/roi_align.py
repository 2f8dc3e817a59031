"""RoIAlign (Mask R-CNN, arXiv 1703.06870, §3) with Detectron2's semantics, its FPN
multi-level version (FPN, arXiv 1612.03144, eq. 1) and the bilinear sampler both are
built on (reused by TSD's deformable, per-bin-offset pooling, arXiv 2003.07540 eq. 6).

For a box ``(x1, y1, x2, y2)`` in image pixels, scale ``s`` and ``o = 0.5`` if ``aligned`` else 0::

    start = (x1 s - o, y1 s - o),  size = ((x2 - x1) s, (y2 - y1) s)  (at least 1 if not aligned)
    bin = size / output_size
    out[ph, pw] = 1 / g^2 * sum_{iy, ix < g} F_B(start_y + ph bin_h + (iy + 0.5) bin_h / g,
                                                start_x + pw bin_w + (ix + 0.5) bin_w / g)

with ``g = sampling_ratio``. ``F_B`` (``bilinear_sample``) is 0 outside
``[-1, H] x [-1, W]``, clamps coordinates into ``[0, H - 1] x [0, W - 1]`` otherwise and
interpolates between the four neighbours (Detectron2 ``ROIAlign``/Caffe2 ``RoIAlign``).
Out-of-range samples count in the average.

Deviations: boxes come as a padded batch ``[B, R, 4]`` (static shapes) instead of a list of
``(batch_index, box)`` rows. Detectron2's adaptive ``sampling_ratio=0``
(``ceil(roi_size / output_size)`` samples, a data-dependent shape) is rejected: pass the
ratio (2 in mmdet v1/TSD, Detectron2 box heads use 0 and get about 2 for typical RoIs).
The multi-level version computes RoIAlign on every level and keeps each box's assigned level
(``len(levels)`` times the work of one pass, static shapes). Sampling runs in float32; the
result has the features' dtype.
"""

from keras import ops

from keras_cvx.validation import require_positive, require_positive_int


def bilinear_sample(features, y, x):
    """Bilinear samples of ``features [B, H, W, C]`` at points ``y, x`` of shape ``[B, ...]``
    (feature-map pixel units, pixel centres at integers) -> ``[B, ..., C]``.

    Detectron2 border rule: 0 where ``y < -1``, ``y > H``, ``x < -1`` or ``x > W``; otherwise the
    point is clamped into the map. Differentiable in ``features`` and in ``y, x``.
    """
    batch, height, width, channels = features.shape
    y, x = ops.cast(y, "float32"), ops.cast(x, "float32")
    inside = (y >= -1.0) & (y <= float(height)) & (x >= -1.0) & (x <= float(width))
    y = ops.clip(y, 0.0, float(height - 1))
    x = ops.clip(x, 0.0, float(width - 1))
    y0, x0 = ops.floor(y), ops.floor(x)
    ly, lx = y - y0, x - x0
    y0, x0 = ops.cast(y0, "int32"), ops.cast(x0, "int32")
    y1, x1 = ops.minimum(y0 + 1, height - 1), ops.minimum(x0 + 1, width - 1)
    point_shape = tuple(y.shape[1:])
    base = ops.reshape(ops.arange(batch, dtype="int32") * (height * width), (batch,) + (1,) * len(point_shape))
    flat = ops.reshape(features, (batch * height * width, channels))

    def corner(yi, xi):
        return ops.cast(ops.take(flat, base + yi * width + xi, axis=0), "float32")

    weights = [(1.0 - ly) * (1.0 - lx), (1.0 - ly) * lx, ly * (1.0 - lx), ly * lx]
    values = [corner(y0, x0), corner(y0, x1), corner(y1, x0), corner(y1, x1)]
    out = sum(ops.expand_dims(w, -1) * v for w, v in zip(weights, values))
    return ops.cast(out * ops.expand_dims(ops.cast(inside, "float32"), -1), features.dtype)


def _output_size(output_size):
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    return tuple(require_positive_int("output_size", int(s)) for s in output_size)


def _check_sampling_ratio(sampling_ratio):
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int) or sampling_ratio < 1:
        raise ValueError(
            f"`sampling_ratio` must be a positive integer, got {sampling_ratio!r}; Detectron2's adaptive "
            "value 0 gives data-dependent shapes that XLA cannot compile, pass a fixed ratio such as 2."
        )
    return sampling_ratio


def roi_align(features, boxes, output_size, spatial_scale, sampling_ratio=2, aligned=True):
    """RoIAlign of ``boxes [B, R, 4]`` (``xyxy`` image pixels) on ``features [B, H, W, C]``.

    ``spatial_scale`` = 1 / feature stride. Returns ``[B, R, out_h, out_w, C]``.
    """
    out_h, out_w = _output_size(output_size)
    grid = _check_sampling_ratio(sampling_ratio)
    scale = require_positive("spatial_scale", spatial_scale)
    offset = 0.5 if aligned else 0.0
    boxes = ops.cast(boxes, "float32") * scale - offset
    start_x, start_y = boxes[..., 0:1], boxes[..., 1:2]  # [B, R, 1]
    size_x, size_y = boxes[..., 2:3] - start_x, boxes[..., 3:4] - start_y
    if not aligned:
        size_x, size_y = ops.maximum(size_x, 1.0), ops.maximum(size_y, 1.0)
    steps_y = (ops.arange(out_h * grid, dtype="float32") + 0.5) / (out_h * grid)
    steps_x = (ops.arange(out_w * grid, dtype="float32") + 0.5) / (out_w * grid)
    y = start_y + size_y * steps_y  # [B, R, out_h * g]
    x = start_x + size_x * steps_x  # [B, R, out_w * g]
    y = ops.repeat(ops.expand_dims(y, -1), out_w * grid, axis=-1)
    x = ops.repeat(ops.expand_dims(x, -2), out_h * grid, axis=-2)
    samples = bilinear_sample(features, y, x)  # [B, R, out_h*g, out_w*g, C]
    batch, rois = samples.shape[0], samples.shape[1]
    samples = ops.reshape(samples, (batch, rois, out_h, grid, out_w, grid, features.shape[-1]))
    return ops.cast(ops.mean(ops.cast(samples, "float32"), axis=(3, 5)), features.dtype)


def fpn_level(boxes, min_level=2, max_level=5, canonical_size=224.0, canonical_level=4):
    """FPN level of each box ``[..., 4]``: ``clamp(floor(k0 + log2(sqrt(w h) / 224 + 1e-8)))``
    (Detectron2's epsilon; ``w = x2 - x1`` without "+1"). int32 ``[...]``."""
    boxes = ops.cast(boxes, "float32")
    area = ops.maximum(boxes[..., 2] - boxes[..., 0], 0.0) * ops.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    level = ops.floor(canonical_level + ops.log2(ops.sqrt(area) / float(canonical_size) + 1e-8))
    return ops.cast(ops.clip(level, float(min_level), float(max_level)), "int32")


def multilevel_roi_align(features, boxes, output_size, min_level=2, sampling_ratio=2, aligned=True,
                         canonical_size=224.0, canonical_level=4):
    """RoIAlign on an FPN pyramid: ``features`` is a list ``[P_min_level, ...]`` (stride
    ``2^level``), each box is pooled from its ``fpn_level``. Returns ``[B, R, out_h, out_w, C]``."""
    max_level = min_level + len(features) - 1
    levels = fpn_level(boxes, min_level, max_level, canonical_size, canonical_level)[..., None, None, None]
    pooled = None
    for level, feature in enumerate(features, start=min_level):
        out = roi_align(feature, boxes, output_size, 1.0 / 2**level, sampling_ratio, aligned)
        pooled = out if pooled is None else ops.where(levels == level, out, pooled)
    return pooled
