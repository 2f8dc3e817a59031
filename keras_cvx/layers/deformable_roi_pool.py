"""Deformable per-bin RoI pooling, the task-aware pooling of TSD.

Paper: "Revisiting the Sibling Head in Object Detector", G. Song, Y. Liu, X. Wang, CVPR 2020,
arXiv 2003.07540, eqs. 3-6 (``Delta C = gamma F_c(F) (w, h)`` per bin for the classification
proposal, ``Delta R = gamma F_r(F) (w, h)`` for the whole localization proposal, eq. 6 the
pooling), with the geometry of the official code (mmdet v1 ``DeformRoIPooling``, group size 1):
rounded RoI corners, a -0.5 shift, ``n x n`` samples per bin aligned to the bin's top-left
corner, offsets times ``gamma`` times the RoI size, the mean over the samples inside the map.
The computation is ``keras_cvx.ops.deformable_roi_pool`` / ``multilevel_deformable_roi_pool``;
this layer only holds the configuration.
"""

import keras
from keras import ops

from keras_cvx.ops.deformable_roi_pool import deformable_roi_pool, multilevel_deformable_roi_pool
from keras_cvx.validation import require_positive, require_positive_int


def _output_size(output_size):
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    if len(tuple(output_size)) != 2:
        raise ValueError(f"`output_size` must be an int or a pair (out_h, out_w), got {output_size!r}.")
    return tuple(require_positive_int("output_size", s) for s in output_size)


@keras.saving.register_keras_serializable(package="keras_cvx")
class DeformableRoIPool(keras.layers.Layer):
    """Pools ``out_h x out_w`` bins per RoI, each bin moved by its own learned offset.

    For a box with rounded corners, ``start_x = x1r s - 0.5``, ``roi_w = max((x2r + 1) s -
    0.5 - start_x, 0.1)`` (``s = 1 / stride``, same for ``y``) and the offsets ``(dx, dy)`` of
    bin ``(ph, pw)``, the bin's samples are::

        x(i) = start_x + pw roi_w / out_w + gamma dx roi_w + i roi_w / (out_w n),  i = 0 .. n - 1

    and the output is the mean of the bilinear samples inside the map (0 if none is). Zero
    offsets give the plain pooling of this geometry (not RoIAlign: the rounding, the shift and
    the corner-aligned samples differ).

    Args:
        output_size: ``k`` or ``(out_h, out_w)`` bins (default 7).
        spatial_scale: ``1 / stride`` of a single feature map; required when ``features`` is
            one map, unused for a pyramid (default None).
        min_level: level of the first map when ``features`` is a pyramid list (default 2).
        sampling_ratio: samples per bin and axis ``n`` (default 4, mmdet's ``sample_per_part``).
        gamma: offset scale (default 0.1, the paper's and mmdet's ``trans_std``).
        finest_scale: box size of mmdet v1's level rule for pyramids (default 56).

    Call arguments:
        features: ``[B, H, W, C]`` or a list of pyramid levels ``[B, H_l, W_l, C]``.
        boxes: ``[B, R, 4]`` ``xyxy`` boxes in image pixels (float32 is kept under mixed
            precision: inputs are not cast to the compute dtype).
        offsets: ``[B, R, out_h, out_w, 2]`` per-bin ``(dx, dy)``, ``[B, R, 2]`` one offset per
            RoI (TSD's localization proposal), or None (zero offsets).
        levels: optional int32 ``[B, R]`` absolute levels for a pyramid (default: mmdet v1's
            ``map_roi_levels`` rule).

    Output: ``[B, R, out_h, out_w, C]`` in the compute dtype. No weights.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.layers import DeformableRoIPool
    >>> pool = DeformableRoIPool(output_size=7, spatial_scale=1 / 8)
    >>> features = np.random.rand(2, 32, 32, 16).astype("float32")
    >>> boxes = np.array([[[8, 8, 120, 100]], [[0, 0, 64, 64]]], "float32")
    >>> tuple(pool(features, boxes, np.zeros((2, 1, 7, 7, 2), "float32")).shape)
    (2, 1, 7, 7, 16)

    Differences from the reference implementation: offsets are channels-last
    ``[B, R, k, k, 2]`` with ``(x, y)`` last (mmdet: ``[N, 2, k, k]``); boxes are a padded
    batch instead of ``(batch_index, box)`` rows.
    """

    def __init__(self, output_size=7, spatial_scale=None, min_level=2, sampling_ratio=4, gamma=0.1,
                 finest_scale=56.0, **kwargs):
        # Boxes and offsets stay float32 under mixed precision; features are cast in call().
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.output_size = _output_size(output_size)
        self.spatial_scale = None if spatial_scale is None else require_positive("spatial_scale", spatial_scale)
        if isinstance(min_level, bool) or not isinstance(min_level, int) or min_level < 0:
            raise ValueError(f"`min_level` must be a non-negative integer, got {min_level!r}.")
        self.min_level = min_level
        self.sampling_ratio = require_positive_int("sampling_ratio", sampling_ratio)
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
            raise ValueError(f"`gamma` must be a number, got {gamma!r}.")
        self.gamma = float(gamma)
        self.finest_scale = require_positive("finest_scale", finest_scale)

    def _is_pyramid(self, features):
        return isinstance(features, (list, tuple)) and not isinstance(features[0], (int, type(None)))

    def build(self, features_shape, boxes_shape, offsets_shape=None, levels_shape=None):
        if not self._is_pyramid(features_shape) and self.spatial_scale is None:
            raise ValueError(
                "`spatial_scale` (1 / stride) is required when `features` is one [B, H, W, C] map; "
                "pass a list of levels for a pyramid."
            )
        if len(boxes_shape) != 3 or boxes_shape[-1] != 4:
            raise ValueError(f"`boxes` must be [B, R, 4], got shape {tuple(boxes_shape)}.")

    def call(self, features, boxes, offsets=None, levels=None):
        boxes = ops.cast(boxes, "float32")
        offsets = None if offsets is None else ops.cast(offsets, "float32")
        kwargs = dict(output_size=self.output_size, sampling_ratio=self.sampling_ratio, gamma=self.gamma)
        if self._is_pyramid(features):
            features = [ops.cast(f, self.compute_dtype) for f in features]
            return multilevel_deformable_roi_pool(features, boxes, offsets, min_level=self.min_level,
                                                  finest_scale=self.finest_scale, levels=levels, **kwargs)
        features = ops.cast(features, self.compute_dtype)
        return deformable_roi_pool(features, boxes, offsets, spatial_scale=self.spatial_scale, **kwargs)

    def compute_output_shape(self, features_shape, boxes_shape, offsets_shape=None, levels_shape=None):
        channels = features_shape[0][-1] if self._is_pyramid(features_shape) else features_shape[-1]
        return (boxes_shape[0], boxes_shape[1]) + self.output_size + (channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            output_size=self.output_size,
            spatial_scale=self.spatial_scale,
            min_level=self.min_level,
            sampling_ratio=self.sampling_ratio,
            gamma=self.gamma,
            finest_scale=self.finest_scale,
        )
        return config
