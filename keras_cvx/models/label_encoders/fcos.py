"""FCOS target assignment with CondInst's options: sizes of interest, center sampling
around the mask's centre of mass, the smallest box for ambiguous locations.

Papers: "FCOS: Fully Convolutional One-Stage Object Detection", arXiv 1904.01355 (Sec. 3.1,
eq. 1 regression targets; Sec. 3.2 multi-level assignment; Sec. 3.3 center-ness, eq. 3) with
the "improved FCOS" center sampling (radius 1.5 strides), as CondInst uses it
("Conditional Convolutions for Instance Segmentation", arXiv 2003.05664, Sec. 3.1; AdelaiDet
``FCOSOutputs.compute_targets_for_locations``). Built on ``keras_cvx.ops.matching.fcos_match``.

For location ``(x, y)`` of level ``l`` (stride ``s_l``) and box ``g = (x0, y0, x1, y1)``:
``(l*, t*, r*, b*) = (x - x0, y - y0, x1 - x, y1 - y)``. ``g`` is a candidate when

* ``lo_l <= max(l*, t*, r*, b*) <= hi_l`` (both inclusive) with ``[lo, hi]`` = ``[-1, 64]``,
  ``[64, 128]``, ``[128, 256]``, ``[256, 512]``, ``[512, 1e8]`` for P3..P7, and
* the location is strictly inside ``[c - 1.5 s_l, c + 1.5 s_l]^2`` clipped to ``g``, ``c`` the
  centre of mass of the instance's mask (the box centre when there is no mask).

Among the candidates the box of smallest area wins (the first on ties); none -> background.
Targets: class id, ``(l*, t*, r*, b*) / s_l`` and the center-ness
``sqrt(min(l*, r*) / max(l*, r*) * min(t*, b*) / max(t*, b*))``.
"""

import keras
import numpy as np
from keras import ops

from keras_cvx.ops.matching import FCOS_SIZES_OF_INTEREST, fcos_match, gather_matches
from keras_cvx.validation import require_positive, require_positive_int


def mask_centers(masks, boxes, mask_stride):
    """Centres of mass ``(x, y)`` ``[B, M, 2]`` of masks ``[B, M, h, w]`` given on a grid of
    stride ``mask_stride`` of the image (cell ``(i, j)`` covers pixels ``[s i, s i + s)``, so its
    integer pixel indices average to ``s i + (s - 1) / 2``); an empty mask gives the centre of its
    ``boxes [B, M, 4]`` row.

    CondInst (AdelaiDet ``add_bitmasks``) averages the integer pixel indices of the
    full-resolution mask; from a mask at stride ``s`` this is exact when every cell is either
    fully inside or fully outside the instance.
    """
    masks = ops.cast(masks, "float32")
    boxes = ops.cast(boxes, "float32")
    offset = (mask_stride - 1) / 2.0
    ys = ops.arange(masks.shape[-2], dtype="float32") * mask_stride + offset
    xs = ops.arange(masks.shape[-1], dtype="float32") * mask_stride + offset
    area = ops.sum(masks, axis=(-2, -1))
    safe = ops.maximum(area, 1.0)
    cx = ops.sum(ops.sum(masks, axis=-2) * xs, axis=-1) / safe
    cy = ops.sum(ops.sum(masks, axis=-1) * ys, axis=-1) / safe
    box_cx = (boxes[..., 0] + boxes[..., 2]) / 2.0
    box_cy = (boxes[..., 1] + boxes[..., 3]) / 2.0
    empty = area <= 0.0
    return ops.stack([ops.where(empty, box_cx, cx), ops.where(empty, box_cy, cy)], axis=-1)


def centerness(distances):
    """FCOS center-ness (arXiv 1904.01355 eq. 3) of ``(l, t, r, b)`` ``[..., 4]`` -> ``[...]``
    (0 where a side is not positive)."""
    distances = ops.cast(distances, "float32")
    left, top, right, bottom = (distances[..., k] for k in range(4))
    lr = ops.minimum(left, right) / ops.maximum(ops.maximum(left, right), 1e-12)
    tb = ops.minimum(top, bottom) / ops.maximum(ops.maximum(top, bottom), 1e-12)
    return ops.sqrt(ops.maximum(lr * tb, 0.0))


@keras.saving.register_keras_serializable(package="keras_cvx")
class FCOSLabelEncoder:
    """FCOS targets for padded ground truth (see the module docstring).

    Args:
        strides: stride of each level (default ``(8, 16, 32, 64, 128)``).
        sizes_of_interest: the ``len(strides) - 1`` boundaries between the levels' regression
            ranges (default ``(64, 128, 256, 512)``).
        center_sampling_radius: sub-box half-size in strides (default 1.5); ``None`` turns
            center sampling off (any location inside the box is a candidate).

    Call: ``encoder(gt_boxes [B, M, 4], gt_labels [B, M], locations [N, 2], levels [N],
    gt_centers=None)`` (``xyxy`` pixels, labels 0-based with ``-1`` padding, the locations
    and levels of ``FCOSLocations``, optional ``(x, y)`` sampling centres ``[B, M, 2]``) ->
    dict of

    * ``"labels"`` int32 ``[B, N]``: class of the assigned box, ``-1`` for background;
    * ``"box_targets"`` float32 ``[B, N, 4]``: ``(l, t, r, b)`` divided by the stride (0 on
      background);
    * ``"centerness_targets"`` float32 ``[B, N]`` (0 on background);
    * ``"matched_gt"`` int32 ``[B, N]``: index of the assigned box, ``-1`` for background.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.models import FCOSLabelEncoder
    >>> from keras_cvx.models.anchor_generators import FCOSLocations
    >>> locations, levels = FCOSLocations()((64, 64))
    >>> targets = FCOSLabelEncoder()(np.array([[[8, 8, 40, 40]]], "float32"), np.array([[2]]),
    ...                              locations, levels)
    >>> int((np.asarray(targets["labels"]) == 2).sum())
    4

    Differences from the reference implementation: the centre of mass comes from the masks
    the input pipeline gives (stride 4 by default; see ``mask_centers``), not from the
    full-resolution bitmask.
    """

    def __init__(self, strides=(8, 16, 32, 64, 128), sizes_of_interest=FCOS_SIZES_OF_INTEREST,
                 center_sampling_radius=1.5):
        self.strides = tuple(require_positive_int("strides", int(s)) for s in strides)
        self.sizes_of_interest = tuple(float(require_positive("sizes_of_interest", float(s)))
                                       for s in sizes_of_interest)
        if len(self.sizes_of_interest) != len(self.strides) - 1:
            raise ValueError(f"`sizes_of_interest` needs len(strides) - 1 = {len(self.strides) - 1} boundaries, "
                             f"got {sizes_of_interest!r}.")
        self.center_sampling_radius = (None if center_sampling_radius is None
                                       else require_positive("center_sampling_radius", center_sampling_radius))

    def __call__(self, gt_boxes, gt_labels, locations, levels, gt_centers=None):
        gt_boxes = ops.cast(gt_boxes, "float32")
        gt_labels = ops.cast(gt_labels, "int32")
        matched, state = fcos_match(gt_boxes, gt_labels, locations, levels, self.strides, self.sizes_of_interest,
                                    self.center_sampling_radius, gt_centers)
        positive = state == 1
        locations = ops.cast(locations, "float32")
        boxes = gather_matches(gt_boxes, matched)  # [B, N, 4]
        x, y = locations[:, 0], locations[:, 1]
        distances = ops.stack([x - boxes[..., 0], y - boxes[..., 1], boxes[..., 2] - x, boxes[..., 3] - y], -1)
        strides = ops.take(ops.convert_to_tensor(np.asarray(self.strides, np.float32)), ops.cast(levels, "int32"))
        box_targets = ops.where(positive[..., None], distances / strides[:, None], 0.0)
        return {
            "labels": ops.where(positive, gather_matches(gt_labels, matched, fill_value=-1), -1),
            "box_targets": box_targets,
            "centerness_targets": ops.where(positive, centerness(box_targets), 0.0),
            "matched_gt": ops.cast(matched, "int32"),
        }

    def get_config(self):
        radius = self.center_sampling_radius
        return {"strides": list(self.strides), "sizes_of_interest": list(self.sizes_of_interest),
                "center_sampling_radius": radius}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
