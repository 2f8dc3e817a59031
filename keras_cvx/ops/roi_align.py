"""RoIAlign ("Mask R-CNN", He et al., arXiv 1703.06870, §3) with Detectron2's semantics, its
multi-level version ("Feature Pyramid Networks for Object Detection", Lin et al., arXiv
1612.03144, eq. 1) and the bilinear sampler both are built on (also used by the deformable,
per-bin-offset pooling of "Revisiting the Sibling Head in Object Detector", arXiv 2003.07540,
eq. 6, in ``keras_cvx.ops.deformable_roi_pool``).

For a box ``(x1, y1, x2, y2)`` in image pixels, scale ``s`` and ``o = 0.5`` if ``aligned`` else 0::

    start = (x1 s - o, y1 s - o),  size = ((x2 - x1) s, (y2 - y1) s)  (at least 1 if not aligned)
    bin = size / output_size
    out[ph, pw] = 1 / g^2 * sum_{iy, ix < g} F_B(start_y + ph bin_h + (iy + 0.5) bin_h / g,
                                                start_x + pw bin_w + (ix + 0.5) bin_w / g)

with ``g = sampling_ratio``. ``F_B`` (``bilinear_sample``) is 0 outside
``[-1, H] x [-1, W]``, clamps coordinates into ``[0, H - 1] x [0, W - 1]`` otherwise and
interpolates between the four neighbours (Detectron2 ``ROIAlign``/Caffe2 ``RoIAlign``).
Out-of-range samples count in the average.

How it is computed (cost proportional to the output, not to ``g^2`` corner tensors): the
sample grid of a box is separable, so each output bin is
``sum_{a, b} wy[a] wx[b] F[row_a, col_b]`` over the ``2g`` rows and ``2g`` columns its
samples touch, with the bilinear weights, the border rule and the ``1 / g^2`` mean folded into
``wy`` and ``wx``. The ``(2g)^2`` terms are gathered straight from the feature map (channels
last, one row of ``C`` values per gather) and summed as they are gathered: XLA fuses the
gathers, weights and sum into one loop that writes only the ``[B, R, out_h, out_w, C]``
result. (The separable alternative, one small matmul per axis over the whole map, costs
``R out H W C`` and was slower at every size measured on CPU.) The gradient with respect to
the features is the exact transpose, one scatter-add (``segment_sum``) of
``wy[a] wx[b] dL/dout`` into the feature rows. As in Detectron2 and torchvision, no gradient
flows into the boxes.

The multi-level version gives each box the row offset, size and scale of its own level in a
table of feature rows, so each box is pooled once, from its level only (as TF Model Garden's
``multilevel_crop_and_resize``, which flattens all levels into one table). Here the largest
level stays a table of its own (a reshape, no copy) and only the smaller levels are
concatenated: copying a whole 800x800 pyramid costs about as much as pooling 512 RoIs, while
the second table costs one extra gather per sample.

Differences from the reference implementations: boxes come as a padded batch ``[B, R, 4]``
(static shapes) instead of a list of ``(batch_index, box)`` rows. Detectron2's adaptive
``sampling_ratio=0`` (``ceil(roi_size / output_size)`` samples, a data-dependent shape) is
rejected: pass the ratio (2 in mmdet v1/TSD; Detectron2 box heads use 0 and get about 2 for
typical RoIs). Sampling runs in float32; the result has the features' dtype.
"""

from keras import ops

from keras_cvx.validation import require_positive, require_positive_int


def _sum_to(x, shape):
    """Sums ``x`` over the axes that ``shape`` broadcasts (the reverse of broadcasting)."""
    shape = tuple(shape)
    extra = len(x.shape) - len(shape)
    if extra:
        x = ops.sum(x, axis=tuple(range(extra)))
    axes = tuple(i for i, (have, want) in enumerate(zip(x.shape, shape)) if want == 1 and have != 1)
    return ops.sum(x, axis=axes, keepdims=True) if axes else x


def sample_grid(tables, base, width, rows, row_weights, cols, col_weights, table_id=None, row_shift=None,
                row_slope=None, col_shift=None, col_slope=None):
    """The shared sampler: ``out[..., c] = sum_{a, b} row_weights[..., a] col_weights[..., b]
    table[base + rows[..., a] * width + cols[..., b], c]`` (float32).

    ``tables`` is one ``[M, C]`` table of feature rows (a ``[B, H, W, C]`` map reshaped) or a
    list of them (pyramid levels; ``table_id`` int32 then says which table each output element
    reads). ``rows``/``row_weights`` are ``[..., Ka]``, ``cols``/``col_weights`` ``[..., Kb]``;
    ``base``, ``width`` (ints or int32 tensors), ``table_id``, ``rows[..., 0]`` and
    ``cols[..., 0]`` broadcast together to the output's leading shape, which ``rows`` and
    ``cols`` must span between them. The ``Ka * Kb`` terms are gathered and summed in one pass
    (one fused loop under XLA). Gradients: exact with respect to the tables (one
    ``segment_sum`` per table); none with respect to indices and weights, except through the
    optional shifts: when ``row_shift`` (broadcastable to the leading shape) is given, its
    gradient is ``sum_c dL/dout[c] sum_{a, b} row_slope[..., a] col_weights[..., b] table[..., c]``,
    i.e. ``row_slope`` is the derivative of ``row_weights`` with respect to one shift of all
    the rows (likewise for columns); the caller computes ``rows``/``row_weights`` with the
    shift already applied.
    """
    tables = list(tables) if isinstance(tables, (list, tuple)) else [tables]
    if len(tables) > 1 and table_id is None:
        raise ValueError("`table_id` is required with several tables.")
    channels = tables[0].shape[-1]
    row_terms, col_terms = rows.shape[-1], cols.shape[-1]
    hits = [table_id == t for t in range(len(tables))] if len(tables) > 1 else [None]

    def index(a, b):
        return base + rows[..., a] * width + cols[..., b]

    def gather(values, position):
        if len(values) == 1:
            return ops.cast(ops.take(values[0], position, axis=0), "float32")
        out = 0.0
        for table, hit in zip(values, hits):
            value = ops.cast(ops.take(table, ops.where(hit, position, 0), axis=0), "float32")
            out = out + ops.where(hit[..., None], value, 0.0)
        return out

    def combine(row_w, col_w, values):
        out = 0.0
        for a in range(row_terms):
            for b in range(col_terms):
                weight = row_w[..., a] * col_w[..., b]
                out = out + weight[..., None] * gather(values, index(a, b))
        return out

    shifts = [s for s in (row_shift, col_shift) if s is not None]

    @ops.custom_gradient
    def sample(*inputs):
        values = list(inputs[: len(tables)])

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            expand = ops.expand_dims
            ids = expand(expand(base, -1), -1) + expand(rows, -1) * expand(expand(width, -1), -1) + expand(cols, -2)
            weights = expand(row_weights, -1) * expand(col_weights, -2)  # [..., Ka, Kb]
            updates = ops.reshape(expand(weights, -1) * upstream[..., None, None, :], (-1, channels))
            grads = []
            for table, hit in zip(values, hits):
                own = ids if hit is None else ops.where(expand(expand(hit, -1), -1), ids, -1)  # -1: dropped
                d_table = ops.segment_sum(updates, ops.reshape(own, (-1,)), table.shape[0])
                grads.append(ops.cast(d_table, table.dtype))
            if row_shift is not None:
                slope = combine(row_slope, col_weights, values)
                grads.append(_sum_to(ops.einsum("...c,...c->...", slope, upstream), row_shift.shape))
            if col_shift is not None:
                slope = combine(row_weights, col_slope, values)
                grads.append(_sum_to(ops.einsum("...c,...c->...", slope, upstream), col_shift.shape))
            return grads[0] if len(grads) == 1 else tuple(grads)

        return combine(row_weights, col_weights, values), grad

    return sample(*tables, *shifts)


def merge_last_axes(x):
    """``[..., m, n] -> [..., m n]`` (leading dimensions may be unknown)."""
    shape = ops.shape(x)
    return ops.reshape(x, tuple(shape[:-2]) + (shape[-2] * shape[-1],))


def axis_corners(position, size):
    """The two neighbours of float32 sample ``position``s along an axis of length ``size`` (an
    int or an int32 tensor broadcastable to ``position``), after clamping into
    ``[0, size - 1]``: ``(low, high, fraction, clamped)`` with ``high = min(low + 1, size - 1)``
    and ``fraction = clamped - low``."""
    last = size - 1
    last_f = float(last) if isinstance(last, int) else ops.cast(last, "float32")
    clamped = ops.minimum(ops.maximum(position, 0.0), last_f)
    low_f = ops.floor(clamped)
    low = ops.cast(low_f, "int32")
    return low, ops.minimum(low + 1, last), clamped - low_f, clamped


def _detectron_axis(position, size, grid):
    """Rows (or columns) and weights of Detectron2's bilinear rule for samples along one axis.
    ``position [..., n * grid]`` -> int32 / float32 ``[..., n, 2 grid]`` (pairs of neighbours,
    weights ``(1 - f, f) * inside / grid``)."""
    size_f = float(size) if isinstance(size, int) else ops.cast(size, "float32")
    inside = ops.cast((position >= -1.0) & (position <= size_f), "float32") / float(grid)
    low, high, fraction, _ = axis_corners(position, size)
    index = ops.stack([low, high], axis=-1)  # [..., n * grid, 2]
    weight = ops.stack([(1.0 - fraction) * inside, fraction * inside], axis=-1)
    shape = ops.shape(index)
    shape = tuple(shape[:-2]) + (shape[-2] // grid, 2 * grid)
    return ops.reshape(index, shape), ops.reshape(weight, shape)


def bilinear_sample(features, y, x):
    """Bilinear samples of ``features`` at points ``(y, x)`` with Detectron2's border rule.

    The sampling of RoIAlign ("Mask R-CNN", K. He et al., https://arxiv.org/abs/1703.06870,
    Sec. 3): 0 where ``y < -1``, ``y > H``, ``x < -1`` or ``x > W``; otherwise the point is
    clamped into the map. Differentiable in ``features`` (exact scatter-add) and in ``y, x``
    (the slope of the interpolation; 0 where the point is clamped or outside).

    Args:
        features: ``[B, H, W, C]``.
        y, x: ``[B, ...]`` point coordinates in feature-map pixel units (pixel centres at
            integers).

    Returns: ``[B, ..., C]`` in ``features``'s dtype.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.ops import bilinear_sample
    >>> features = np.arange(6, dtype="float32").reshape(1, 2, 3, 1)
    >>> float(bilinear_sample(features, np.array([[0.5]]), np.array([[1.0]]))[0, 0, 0])
    2.5
    """
    features = ops.convert_to_tensor(features)
    _, height, width, channels = _check_features(features, "features")
    y, x = ops.cast(y, "float32"), ops.cast(x, "float32")
    table = ops.reshape(features, (-1, channels))
    base = ops.arange(ops.shape(features)[0], dtype="int32") * (height * width)
    base = ops.reshape(base, (-1,) + (1,) * (len(y.shape) - 1))

    def axis(position, size):
        inside = ops.cast((position >= -1.0) & (position <= float(size)), "float32")
        low, high, fraction, clamped = axis_corners(position, size)
        moving = inside * ops.cast((position >= 0.0) & (position <= float(size - 1)), "float32")
        index = ops.stack([low, high], axis=-1)
        weight = ops.stack([(1.0 - fraction) * inside, fraction * inside], axis=-1)
        slope = ops.stack([-moving, moving], axis=-1)
        return index, weight, slope

    rows, row_weights, row_slope = axis(ops.stop_gradient(y), height)
    cols, col_weights, col_slope = axis(ops.stop_gradient(x), width)
    out = sample_grid(table, base, width, rows, row_weights, cols, col_weights,
                      row_shift=y, row_slope=row_slope, col_shift=x, col_slope=col_slope)
    return ops.cast(out, features.dtype)


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


def _check_features(features, name):
    if len(features.shape) != 4 or any(d is None for d in features.shape[1:]):
        raise ValueError(f"`{name}` must be [B, H, W, C] with static H, W, C, got shape {tuple(features.shape)}.")
    return tuple(features.shape)


def check_boxes(boxes, features_batch, features_name="features", boxes_name="boxes"):
    """Static checks shared by the RoI ops: ``boxes [B, R, 4]`` with the features' batch."""
    if len(boxes.shape) != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"`{boxes_name}` must be [B, R, 4] xyxy boxes, got shape {tuple(boxes.shape)}.")
    if features_batch is not None and boxes.shape[0] is not None and features_batch != boxes.shape[0]:
        raise ValueError(
            f"`{features_name}` holds {features_batch} images but `{boxes_name}` holds boxes for {boxes.shape[0]} "
            f"images (shapes [B, H, W, C] and [B, R, 4] must agree on B)."
        )


def check_pyramid(features, name="features"):
    """Static checks of a list of ``[B, H_l, W_l, C]`` levels: same batch and channels."""
    if not isinstance(features, (list, tuple)) or not features:
        raise ValueError(f"`{name}` must be a non-empty list of [B, H, W, C] pyramid levels, got {type(features)}.")
    shapes = [_check_features(f, f"{name}[{i}]") for i, f in enumerate(features)]
    if len({s[3] for s in shapes}) != 1:
        raise ValueError(f"Every level of `{name}` must have the same channels, got shapes {shapes}.")
    batches = {s[0] for s in shapes if s[0] is not None}
    if len(batches) > 1:
        raise ValueError(f"Every level of `{name}` must have the same batch size, got shapes {shapes}.")
    return shapes


def pyramid_table(features, levels, min_level):
    """Tables of feature rows for a list of levels, and each box's place in them.

    ``features``: list of ``[B, H_l, W_l, C]`` (level ``min_level + l``); ``levels``: int32
    ``[B, R]`` absolute levels (clamped to the pyramid). The largest level is used as it is
    (a reshape, no copy) and the others are concatenated into a second table: copying every
    level into one table costs about as much as the pooling (a fresh buffer the size of the
    pyramid), while two tables cost one extra gather per sample.

    Returns ``(tables, table_id, base, height, width, scale)``: the list of ``[rows, C]``
    tables; int32 ``[B, R]`` table of each box (None with one table); ``base`` int32
    ``[B, R]``, the row of pixel (0, 0) of the box's image at its level in that table;
    ``height``/``width`` int32 ``[B, R]``, the level's size; ``scale`` float32 ``[B, R]``,
    its ``1 / 2^level``.
    """
    shapes = check_pyramid(features)
    channels = shapes[0][3]
    batch = ops.shape(levels)[0]
    sizes = [h * w for _, h, w, _ in shapes]
    largest = sizes.index(max(sizes))
    groups = [[largest]] + ([[k for k in range(len(shapes)) if k != largest]] if len(shapes) > 1 else [])
    tables, table_of, start_of = [], [0] * len(shapes), [0] * len(shapes)
    for t, group in enumerate(groups):
        start = 0
        for k in group:
            table_of[k], start_of[k] = t, start
            start += sizes[k]
        flat = [ops.reshape(ops.convert_to_tensor(features[k]), (-1, channels)) for k in group]
        tables.append(flat[0] if len(flat) == 1 else ops.concatenate(flat, axis=0))
    k = ops.clip(levels - min_level, 0, len(shapes) - 1)

    def per_box(values, dtype="int32"):
        return ops.take(ops.convert_to_tensor(values, dtype), k)

    image = ops.arange(batch, dtype="int32")[:, None]
    base = per_box(start_of) * batch + image * per_box(sizes)
    scale = per_box([2.0 ** -(min_level + i) for i in range(len(shapes))], "float32")
    table_id = per_box(table_of) if len(tables) > 1 else None
    return tables, table_id, base, per_box([s[1] for s in shapes]), per_box([s[2] for s in shapes]), scale


def map_geometry(features, boxes):
    """Checks and converts one ``[B, H, W, C]`` map and its ``[B, R, 4]`` boxes; returns
    ``(features, boxes, (table, None, base [B, 1], H, W))`` for the ``*_rows`` functions."""
    features, boxes = ops.convert_to_tensor(features), ops.convert_to_tensor(boxes)
    batch, height, width, channels = _check_features(features, "features")
    check_boxes(boxes, batch)
    table = ops.reshape(features, (-1, channels))
    base = ops.arange(ops.shape(features)[0], dtype="int32")[:, None] * (height * width)
    return features, boxes, (table, None, base, height, width)


def pyramid_geometry(features, boxes, min_level, levels, level_fn):
    """Checks and converts a pyramid and its boxes; returns ``(features, boxes, geometry)`` with
    ``geometry`` from ``pyramid_table`` and the levels from ``level_fn(boxes, min_level,
    max_level)`` unless ``levels`` is given."""
    check_pyramid(features)
    features = [ops.convert_to_tensor(f) for f in features]
    boxes = ops.convert_to_tensor(boxes)
    check_boxes(boxes, features[0].shape[0])
    if levels is None:
        levels = level_fn(boxes, min_level, min_level + len(features) - 1)
    return features, boxes, pyramid_table(features, ops.cast(levels, "int32"), min_level)


def _roi_align_rows(tables, table_id, base, height, width, scale, boxes, output_size, sampling_ratio, aligned):
    """RoIAlign from tables of feature rows. ``table_id``/``base``/``height``/``width``/``scale``
    are Python numbers (or None) or ``[B, R]`` tensors (per box, for pyramids)."""
    out_h, out_w = output_size
    grid = sampling_ratio
    offset = 0.5 if aligned else 0.0

    def per_box(v):  # [B, R] -> [B, R, 1] against the boxes' [B, R, 1] coordinates
        return v if isinstance(v, (int, float)) else v[..., None]

    boxes = ops.stop_gradient(ops.cast(boxes, "float32"))
    # a box with a non-finite coordinate pools zeros (instead of gathering at an undefined index)
    finite = ops.all(ops.isfinite(boxes), axis=-1)
    boxes = ops.where(finite[..., None], boxes, 0.0) * per_box(scale) - offset
    start_x, start_y = boxes[..., 0:1], boxes[..., 1:2]  # [B, R, 1]
    size_x, size_y = boxes[..., 2:3] - start_x, boxes[..., 3:4] - start_y
    if not aligned:
        size_x, size_y = ops.maximum(size_x, 1.0), ops.maximum(size_y, 1.0)
    steps_y = (ops.arange(out_h * grid, dtype="float32") + 0.5) / (out_h * grid)
    steps_x = (ops.arange(out_w * grid, dtype="float32") + 0.5) / (out_w * grid)
    rows, row_weights = _detectron_axis(start_y + size_y * steps_y, per_box(height), grid)  # [B, R, out_h, 2g]
    cols, col_weights = _detectron_axis(start_x + size_x * steps_x, per_box(width), grid)  # [B, R, out_w, 2g]

    def per_bin(v):  # [B, R] or [B, 1] -> [..., 1, 1] against [B, R, out_h, out_w]
        return v if v is None or isinstance(v, int) else v[..., None, None]

    pooled = sample_grid(tables, per_bin(base), per_bin(width), rows[:, :, :, None], row_weights[:, :, :, None],
                         cols[:, :, None], col_weights[:, :, None], table_id=per_bin(table_id))
    return pooled * ops.cast(finite, pooled.dtype)[:, :, None, None, None]


def roi_align(features, boxes, output_size, spatial_scale, sampling_ratio=2, aligned=True):
    """RoIAlign of ``boxes`` on one feature map (Mask R-CNN, arXiv 1703.06870, §3).

    Args:
        features: ``[B, H, W, C]`` feature map (any float dtype; ``H, W, C`` static).
        boxes: ``[B, R, 4]`` ``xyxy`` boxes in image pixels, per image (a box with a
            non-finite coordinate gives zeros).
        output_size: ``out`` or ``(out_h, out_w)`` bins.
        spatial_scale: ``1 / stride`` of the feature map.
        sampling_ratio: samples per bin and axis ``g`` (default 2; must be >= 1).
        aligned: subtract half a pixel (Detectron2 ``aligned=True``, default) or not
            (legacy Caffe2/mmdet v1 geometry, box sizes at least 1 feature pixel).

    Returns:
        ``[B, R, out_h, out_w, C]`` in the features' dtype. No gradient flows into ``boxes``.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.ops import roi_align
    >>> features = np.ones((1, 8, 8, 3), "float32")
    >>> boxes = np.array([[[0, 0, 16, 16], [8, 8, 32, 24]]], "float32")
    >>> tuple(roi_align(features, boxes, 2, spatial_scale=0.25).shape)
    (1, 2, 2, 2, 3)
    """
    output_size = _output_size(output_size)
    grid = _check_sampling_ratio(sampling_ratio)
    scale = require_positive("spatial_scale", spatial_scale)
    features, boxes, (table, _, base, height, width) = map_geometry(features, boxes)
    out = _roi_align_rows(table, None, base, height, width, scale, boxes, output_size, grid, aligned)
    return ops.cast(out, features.dtype)


def fpn_level(boxes, min_level=2, max_level=5, canonical_size=224.0, canonical_level=4):
    """FPN level of each box (FPN, arXiv 1612.03144, eq. 1, Detectron2's epsilon):
    ``clamp(floor(k0 + log2(sqrt(w h) / 224 + 1e-8)), min_level, max_level)`` with
    ``w = x2 - x1`` (no "+1").

    Args:
        boxes: ``[..., 4]`` ``xyxy`` boxes in image pixels.
        min_level / max_level: the pyramid's levels (default 2 and 5).
        canonical_size / canonical_level: ``224`` and ``k0 = 4`` as in the paper.

    Returns:
        int32 ``[...]``.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.ops import fpn_level
    >>> [int(k) for k in fpn_level(np.array([[0, 0, 100, 100], [0, 0, 500, 500]], "float32"))]
    [2, 5]
    """
    boxes = ops.cast(boxes, "float32")
    area = ops.maximum(boxes[..., 2] - boxes[..., 0], 0.0) * ops.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    level = ops.floor(canonical_level + ops.log2(ops.sqrt(area) / float(canonical_size) + 1e-8))
    return ops.cast(ops.clip(level, float(min_level), float(max_level)), "int32")


def multilevel_roi_align(features, boxes, output_size, min_level=2, sampling_ratio=2, aligned=True,
                         canonical_size=224.0, canonical_level=4, levels=None):
    """RoIAlign on an FPN pyramid, each box pooled once from its own level.

    The levels are concatenated into one table of feature rows; every box carries the row
    offset, size and ``1 / 2^level`` scale of its level (FPN, arXiv 1612.03144, eq. 1 for
    the level; Mask R-CNN's RoIAlign on it).

    Args:
        features: list ``[P_min_level, P_min_level+1, ...]`` of ``[B, H_l, W_l, C]`` maps
            (stride ``2^level``, same ``B`` and ``C``).
        boxes: ``[B, R, 4]`` ``xyxy`` boxes in image pixels.
        output_size: ``out`` or ``(out_h, out_w)``.
        min_level: level of ``features[0]`` (default 2).
        sampling_ratio: samples per bin and axis (default 2).
        aligned: Detectron2's half-pixel shift (default True).
        canonical_size / canonical_level: of ``fpn_level`` (default 224 and 4).
        levels: optional int32 ``[B, R]`` absolute levels that replace ``fpn_level`` (e.g.
            mmdet v1's ``finest_scale`` rule); clamped to the pyramid.

    Returns:
        ``[B, R, out_h, out_w, C]`` in the features' dtype.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.ops import multilevel_roi_align
    >>> pyramid = [np.ones((1, 64 // 2**k, 64 // 2**k, 2), "float32") for k in range(2, 6)]
    >>> boxes = np.array([[[0, 0, 40, 40], [0, 0, 250, 250]]], "float32")
    >>> tuple(multilevel_roi_align(pyramid, boxes, 7).shape)
    (1, 2, 7, 7, 2)
    """
    output_size = _output_size(output_size)
    grid = _check_sampling_ratio(sampling_ratio)
    def level_fn(b, low, high):
        return fpn_level(b, low, high, canonical_size, canonical_level)

    features, boxes, geometry = pyramid_geometry(features, boxes, min_level, levels, level_fn)
    out = _roi_align_rows(*geometry, boxes, output_size, grid, aligned)
    return ops.cast(out, features[0].dtype)

