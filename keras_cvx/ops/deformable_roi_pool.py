"""Deformable per-bin RoI pooling: TSD's task-aware pooling (Song, Liu, Wang, "Revisiting the
Sibling Head in Object Detector", CVPR 2020, arXiv 2003.07540, eqs. 3-6), with the geometry of
the official code (mmdet v1 ``DeformRoIPooling`` as used by ``DeltaCPooling``/``DeltaRPooling``:
no position-sensitive groups, ``trans_std = gamma``).

For a box ``(x1, y1, x2, y2)`` in image pixels on a map of scale ``s`` (``1 / stride``), size
``H x W``, ``k = output_size`` bins, ``n = sampling_ratio`` samples per bin and axis, and
offsets ``(dx, dy)`` per bin::

    x1r, x2r = round(x1), round(x2)        (C round: half away from zero; same for y)
    start_x = x1r s - 0.5,  roi_w = max((x2r + 1) s - 0.5 - start_x, 0.1)
    bin_w = roi_w / k,  sub_w = bin_w / n
    x(pw, i) = start_x + pw bin_w + gamma dx(ph, pw) roi_w + i sub_w      i = 0 .. n - 1
    out[ph, pw] = mean over the samples (x(pw, i), y(ph, j)) with -0.5 <= x <= W - 0.5 and
                  -0.5 <= y <= H - 0.5 of bilinear(F, clamp(y, 0, H - 1), clamp(x, 0, W - 1))

(0 when no sample of a bin is inside). The samples are corner-aligned in each bin (the first
at the bin's left/top edge, not centred), and an offset ``o`` moves every sample of its bin by
``gamma o`` times the RoI size: ``gamma dx roi_w`` feature pixels, i.e. eq. 5's
``Delta C = gamma F_c(F) (w, h)`` (``gamma = 0.1``). With ``offsets`` of shape ``[B, R, 2]``
every bin moves together (TSD's localization proposal, eqs. 3-4).

It is computed with the bilinear sampler of ``keras_cvx.ops.roi_align`` (``sample_grid``):
per bin, ``n`` sample rows and ``n`` sample columns, their ``2n x 2n`` neighbours gathered from
the feature map and summed with weights in one pass. Gradients: exact with respect to the
features (scatter-add) and, with respect to the offsets, the slope of the bilinear
interpolation times ``gamma`` times the RoI size over the sample count, as in the Deformable
ConvNets kernel (zero for a sample exactly on an integer coordinate or clamped, where that
kernel's floor and ceil neighbours coincide); none with respect to the boxes.

Differences from the reference implementation: boxes come as a padded batch ``[B, R, 4]``
and offsets as ``[B, R, out_h, out_w, 2]`` with ``(x, y)`` last (channels-last layout of
mmdet's ``[N, 2, k, k]``); the multi-level version picks each box's level with mmdet v1's
``map_roi_levels`` rule (``mmdet_roi_level``) unless levels are given. Sampling runs in
float32; the result has the features' dtype.
"""

from keras import ops

from keras_cvx.ops.roi_align import (
    _output_size,
    axis_corners,
    map_geometry,
    merge_last_axes,
    pyramid_geometry,
    sample_grid,
)
from keras_cvx.validation import require_positive, require_positive_int


def mmdet_roi_level(boxes, min_level=2, max_level=5, finest_scale=56.0):
    """mmdet v1's FPN level of each box (``SingleRoIExtractor.map_roi_levels``, used by TSD):
    ``clamp(floor(log2(sqrt(w h) / finest_scale + 1e-6)), 0, L - 1) + min_level`` with the
    "+1" sizes ``w = x2 - x1 + 1``, ``h = y2 - y1 + 1``.

    Args:
        boxes: ``[..., 4]`` ``xyxy`` boxes in image pixels.
        min_level / max_level: the pyramid's levels (default 2 and 5: P2-P5).
        finest_scale: box size mapped to ``min_level + 1``'s lower edge (default 56).

    Returns:
        int32 ``[...]`` absolute levels.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.ops import mmdet_roi_level
    >>> [int(k) for k in mmdet_roi_level(np.array([[0, 0, 50, 50], [0, 0, 300, 300]], "float32"))]
    [2, 4]
    """
    boxes = ops.cast(boxes, "float32")
    width = boxes[..., 2] - boxes[..., 0] + 1.0
    height = boxes[..., 3] - boxes[..., 1] + 1.0
    scale = ops.sqrt(ops.maximum(width * height, 0.0))
    level = ops.floor(ops.log2(scale / float(finest_scale) + 1e-6))
    return ops.cast(ops.clip(level, 0.0, float(max_level - min_level)), "int32") + min_level


def _round_half_away(x):
    return ops.sign(x) * ops.floor(ops.abs(x) + 0.5)


def _check_offsets(offsets, boxes, output_size):
    if offsets is None:
        return None
    offsets = ops.convert_to_tensor(offsets)
    out_h, out_w = output_size
    shape = tuple(offsets.shape)
    per_bin = len(shape) == 5 and tuple(shape[2:]) == (out_h, out_w, 2)
    per_roi = len(shape) == 3 and shape[2] == 2
    if not (per_bin or per_roi):
        raise ValueError(
            f"`offsets` must be [B, R, {out_h}, {out_w}, 2] (per bin, (x, y) last) or [B, R, 2] (one per RoI), "
            f"got shape {shape}."
        )
    for axis, name in ((0, "images"), (1, "RoIs")):
        if shape[axis] is not None and boxes.shape[axis] is not None and shape[axis] != boxes.shape[axis]:
            raise ValueError(
                f"`offsets` holds {shape[axis]} {name} but `boxes` holds {boxes.shape[axis]} "
                f"(shapes {shape} and {tuple(boxes.shape)})."
            )
    offsets = ops.cast(offsets, "float32")
    return offsets if per_bin else offsets[:, :, None, None, :]


def _axis(start, bin_size, bins, samples, shift, size):
    """Sample positions, neighbours and weights along one axis.

    ``start``/``bin_size`` ``[B, R, 1, 1]``; ``shift`` None or broadcastable ``[B, R, *, *]``;
    ``size`` (int or ``[B, R, 1, 1]``). Returns int32/float32 ``[B, R, a, b, 2 n]`` for rows
    ``(a, b) = (out_h, 1 or out_w)`` or columns ``(1 or out_h, out_w)`` (the caller transposes)."""
    steps = ops.arange(bins, dtype="float32")[:, None] * bin_size[..., None] + (
        ops.arange(samples, dtype="float32") * (bin_size[..., None] / samples))  # [B, R, 1, bins, n]
    position = start[..., None] + steps
    if shift is not None:
        position = position + ops.stop_gradient(shift)[..., None]
    size_f = float(size) if isinstance(size, int) else ops.cast(size, "float32")[..., None]
    valid = ops.cast((position >= -0.5) & (position <= size_f - 0.5), "float32")
    count = ops.maximum(ops.sum(valid, axis=-1, keepdims=True), 1.0)
    low, high, fraction, clamped = axis_corners(position, size if isinstance(size, int) else size[..., None])
    moving = valid * ops.cast(clamped != ops.floor(clamped), "float32") / count
    index = ops.stack([low, high], axis=-1)
    weight = ops.stack([(1.0 - fraction) * valid / count, fraction * valid / count], axis=-1)
    slope = ops.stack([-moving, moving], axis=-1)
    return [merge_last_axes(t) for t in (index, weight, slope)]


def _deformable_rows(tables, table_id, base, height, width, scale, boxes, offsets, output_size, sampling_ratio,
                     gamma):
    """Deformable RoI pooling from tables of feature rows (per-box geometry as in
    ``roi_align._roi_align_rows``). Returns float32 ``[B, R, out_h, out_w, C]``."""
    out_h, out_w = output_size

    def per_box(v):  # Python number or [B, R] -> [B, R, 1, 1]
        return v if v is None or isinstance(v, (int, float)) else v[..., None, None]

    boxes = _round_half_away(ops.stop_gradient(ops.cast(boxes, "float32")))[..., None, :]  # [B, R, 1, 4]
    s = per_box(scale)
    start_x, start_y = boxes[..., 0:1] * s - 0.5, boxes[..., 1:2] * s - 0.5  # [B, R, 1, 1]
    roi_w = ops.maximum((boxes[..., 2:3] + 1.0) * s - 0.5 - start_x, 0.1)
    roi_h = ops.maximum((boxes[..., 3:4] + 1.0) * s - 0.5 - start_y, 0.1)
    shift_x = shift_y = None
    if offsets is not None:
        shift_x = gamma * offsets[..., 0] * roi_w  # [B, R, out_h | 1, out_w | 1]
        shift_y = gamma * offsets[..., 1] * roi_h
    # Columns vary along out_w (axis 3): positions [B, R, 1, out_w, n]; with a shift per bin, [B, R, out_h, out_w, n].
    cols, col_weights, col_slope = _axis(start_x, roi_w / out_w, out_w, sampling_ratio, shift_x, per_box(width))
    # Rows vary along out_h: compute as [B, R, 1, out_h, n] then move out_h to axis 2.
    shift_t = None if shift_y is None else ops.swapaxes(shift_y, 2, 3)
    rows, row_weights, row_slope = [
        ops.swapaxes(t, 2, 3) for t in _axis(start_y, roi_h / out_h, out_h, sampling_ratio, shift_t, per_box(height))
    ]
    return sample_grid(tables, per_box(base), per_box(width), rows, row_weights, cols, col_weights,
                       table_id=per_box(table_id), row_shift=shift_y, row_slope=row_slope, col_shift=shift_x,
                       col_slope=col_slope)


def _check_arguments(output_size, sampling_ratio, gamma):
    output_size = _output_size(output_size)
    require_positive_int("sampling_ratio", sampling_ratio)
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
        raise ValueError(f"`gamma` must be a number, got {gamma!r}.")
    return output_size


def deformable_roi_pool(features, boxes, offsets=None, output_size=7, spatial_scale=1.0 / 16, sampling_ratio=4,
                        gamma=0.1):
    """Deformable per-bin RoI pooling on one feature map (TSD, arXiv 2003.07540, eq. 6).

    Args:
        features: ``[B, H, W, C]`` (any float dtype; ``H, W, C`` static).
        boxes: ``[B, R, 4]`` ``xyxy`` boxes in image pixels (mmdet v1 "+1" convention: the
            RoI spans ``x1 .. x2 + 1``).
        offsets: ``[B, R, out_h, out_w, 2]`` per-bin ``(dx, dy)`` in units of ``gamma`` times the
            RoI size, ``[B, R, 2]`` (one for all bins), or None (zero offsets; default).
        output_size: ``k`` or ``(out_h, out_w)`` bins (default 7).
        spatial_scale: ``1 / stride`` of the map (default 1/16).
        sampling_ratio: samples per bin and axis (default 4: 16 per bin, mmdet's
            ``sample_per_part``).
        gamma: offset scale, mmdet's ``trans_std`` (default 0.1, the paper's gamma).

    Returns:
        ``[B, R, out_h, out_w, C]`` in the features' dtype.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.ops import deformable_roi_pool
    >>> features = np.ones((1, 16, 16, 4), "float32")
    >>> boxes = np.array([[[8, 8, 120, 100]]], "float32")
    >>> tuple(deformable_roi_pool(features, boxes, np.zeros((1, 1, 7, 7, 2), "float32"), 7, 1 / 8).shape)
    (1, 1, 7, 7, 4)
    """
    output_size = _check_arguments(output_size, sampling_ratio, gamma)
    scale = require_positive("spatial_scale", spatial_scale)
    features, boxes, geometry = map_geometry(features, boxes)
    offsets = _check_offsets(offsets, boxes, output_size)
    out = _deformable_rows(*geometry, scale, boxes, offsets, output_size, sampling_ratio, float(gamma))
    return ops.cast(out, features.dtype)


def multilevel_deformable_roi_pool(features, boxes, offsets=None, output_size=7, min_level=2, sampling_ratio=4,
                                   gamma=0.1, finest_scale=56.0, levels=None):
    """Deformable per-bin RoI pooling on an FPN pyramid, each box from its own level (TSD,
    arXiv 2003.07540, eq. 6, on the level of mmdet v1's ``map_roi_levels``).

    Args:
        features: list ``[P_min_level, ...]`` of ``[B, H_l, W_l, C]`` (stride ``2^level``).
        boxes: ``[B, R, 4]`` ``xyxy`` boxes in image pixels.
        offsets: as in ``deformable_roi_pool`` (default None: zero offsets).
        output_size: bins (default 7).
        min_level: level of ``features[0]`` (default 2).
        sampling_ratio: samples per bin and axis (default 4).
        gamma: offset scale (default 0.1).
        finest_scale: of ``mmdet_roi_level`` (default 56).
        levels: optional int32 ``[B, R]`` absolute levels replacing ``mmdet_roi_level`` (pass
            the levels the RoIAlign of the same proposals used).

    Returns:
        ``[B, R, out_h, out_w, C]`` in the features' dtype.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.ops import multilevel_deformable_roi_pool
    >>> pyramid = [np.ones((1, 64 // 2**k, 64 // 2**k, 2), "float32") for k in range(2, 6)]
    >>> boxes = np.array([[[0, 0, 40, 40], [0, 0, 250, 250]]], "float32")
    >>> tuple(multilevel_deformable_roi_pool(pyramid, boxes, np.zeros((1, 2, 2), "float32")).shape)
    (1, 2, 7, 7, 2)
    """
    output_size = _check_arguments(output_size, sampling_ratio, gamma)
    def level_fn(b, low, high):
        return mmdet_roi_level(b, low, high, finest_scale)

    features, boxes, geometry = pyramid_geometry(features, boxes, min_level, levels, level_fn)
    offsets = _check_offsets(offsets, boxes, output_size)
    out = _deformable_rows(*geometry, boxes, offsets, output_size, sampling_ratio, float(gamma))
    return ops.cast(out, features[0].dtype)
