"""Instance-mask targets and pasting for 28 x 28 box-frame mask heads (Mask R-CNN-style;
used by PointINS).

Papers: "Mask R-CNN", K. He, G. Gkioxari, P. Dollár, R. Girshick, arXiv 1703.06870 (§3: the
m x m mask target is the ground-truth mask cropped to the box by RoIAlign; at inference the
m x m mask is resized to the box and binarised at 0.5); used for the mask branch of
"PointINS: Point-based Instance Segmentation", arXiv 2003.06148 (whose target frame and
paste are inferred, not confirmed). Semantics of Detectron2's ``BitMasks.crop_and_resize``
and ``_do_paste_mask``.

``crop_mask_targets``: for a box ``(x0, y0, x1, y1)`` in image pixels and a mask on a grid of
stride ``s``, RoIAlign with ``aligned=True``, ``spatial_scale = 1 / s``::

    target[i, j] = [ mean over g x g samples of bilinear(mask, box / s - 0.5 ...) >= 0.5 ]

``paste_masks``: for an image pixel ``(y, x)`` (centre ``(y + 0.5, x + 0.5)``) and a mask
``M`` of ``m x m`` (``torch.nn.functional.grid_sample`` with ``align_corners=False`` and zero
padding on the box)::

    u(x) = (x + 0.5 - x0) / (x1 - x0) m - 0.5,    v(y) = (y + 0.5 - y0) / (y1 - y0) m - 0.5
    out[y, x] = Σ_{i, j} relu(1 - |v(y) - i|) relu(1 - |u(x) - j|) M[i, j]

i.e. ``Wy M Wx^T`` with the ``[H, m]`` and ``[W, m]`` tent-weight matrices (bilinear
interpolation; a neighbour outside the mask contributes 0). Computed with two batched
matmuls, no per-pixel gather.
"""

from keras import ops

from keras_cvx.ops.roi_align import roi_align
from keras_cvx.validation import require_positive_int


def crop_mask_targets(masks, boxes, mask_stride=4, output_size=28, sampling_ratio=2):
    """Binary ``output_size x output_size`` mask targets: each ground-truth mask cropped to its
    box by RoIAlign and binarised at 0.5 (Mask R-CNN, arXiv 1703.06870, §3; Detectron2
    ``BitMasks.crop_and_resize``).

    Each mask is one image of one channel with one box for ``keras_cvx.ops.roi_align.roi_align``
    (``aligned=True``: the box in mask-grid pixels is ``box / mask_stride - 0.5``; each bin
    averages ``sampling_ratio x sampling_ratio`` bilinear samples, 0 beyond one pixel outside
    the mask, clamped to the border within it), then ``>= 0.5``.

    Args:
        masks: ``[P, H, W]`` float or integer (e.g. uint8 0/1) masks on the stride
            ``mask_stride`` grid (``H``, ``W`` static), one per point (already gathered).
        boxes: ``[P, 4]`` ``xyxy`` boxes in input-image pixels (the ground-truth boxes).
        mask_stride: stride of the mask grid in image pixels (default 4; 1 for full-resolution
            masks).
        output_size: side ``m`` of the targets (default 28).
        sampling_ratio: samples per bin and axis (default 2; Detectron2 uses its adaptive
            ``0``, ``ceil(box size / m)`` samples, which has data-dependent shapes).

    Returns:
        float32 ``[P, output_size, output_size]`` of 0 and 1. A box with a non-finite
        coordinate gives zeros.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.ops.masks import crop_mask_targets
    >>> masks = np.zeros((1, 8, 8), "uint8")
    >>> masks[0, :, :4] = 1  # the left half
    >>> targets = crop_mask_targets(masks, np.array([[0, 0, 32, 32]], "float32"), output_size=4)
    >>> np.asarray(targets)[0].astype(int).tolist()
    [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    """
    mask_stride = require_positive_int("mask_stride", mask_stride)
    output_size = require_positive_int("output_size", output_size)
    masks = ops.convert_to_tensor(masks)
    boxes = ops.convert_to_tensor(boxes)
    if len(masks.shape) != 3 or None in tuple(masks.shape[1:]):
        raise ValueError(f"`masks` must be [P, H, W] with static H, W, got shape {tuple(masks.shape)}.")
    if len(boxes.shape) != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"`boxes` must be [P, 4] xyxy boxes, got shape {tuple(boxes.shape)}.")
    if masks.shape[0] is not None and boxes.shape[0] is not None and masks.shape[0] != boxes.shape[0]:
        raise ValueError(f"`masks` and `boxes` must hold the same number of points P, got shapes "
                         f"{tuple(masks.shape)} and {tuple(boxes.shape)}.")
    features = ops.cast(masks, "float32")[..., None]  # [P, H, W, 1]: one image per mask
    pooled = roi_align(features, ops.cast(boxes, "float32")[:, None, :], output_size,
                       spatial_scale=1.0 / mask_stride, sampling_ratio=sampling_ratio, aligned=True)
    return ops.cast(pooled[:, 0, :, :, 0] >= 0.5, "float32")


def _tent_weights(low, high, size, mask_size):
    """``[..., size, mask_size]`` bilinear weights of the image pixels ``0..size-1`` on the
    ``mask_size`` cells of a box side ``[low, high]`` (``low``/``high`` ``[...]`` float32)."""
    extent = ops.maximum(high - low, 1.0)  # degenerate boxes: at least one pixel wide
    centres = ops.arange(size, dtype="float32") + 0.5
    u = (centres - low[..., None]) / extent[..., None] * float(mask_size) - 0.5  # [..., size]
    cells = ops.arange(mask_size, dtype="float32")
    return ops.relu(1.0 - ops.abs(u[..., None] - cells))


def paste_masks(mask_probabilities, boxes, image_size):
    """Pastes ``m x m`` mask probabilities into their boxes on the image (Mask R-CNN, arXiv
    1703.06870, §3 inference; Detectron2 ``_do_paste_mask``): bilinear, zero outside.

    For the image pixel ``(y, x)`` the mask is read at ``u = (x + 0.5 - x0) / (x1 - x0) m - 0.5``,
    ``v = (y + 0.5 - y0) / (y1 - y0) m - 0.5`` (``grid_sample`` with ``align_corners=False``,
    zero padding), computed separably as ``Wy M Wx^T`` (module docstring).

    Differences from Detectron2: the whole image is computed (its GPU path; the CPU path
    computes only the box's integer extent ±1 pixel, which can cut off the bilinear fringe of
    up to half a mask cell beyond the box). Box sides shorter than 1 pixel (including
    degenerate ``x1 <= x0`` boxes) are widened to 1 pixel from ``x0`` (``y0``), so no NaN
    appears; a box with a non-finite coordinate pastes zeros.

    Args:
        mask_probabilities: ``[B, D, m, m]`` mask probabilities (the sigmoid of the logits).
        boxes: ``[B, D, 4]`` ``xyxy`` boxes in image pixels.
        image_size: static ``(H, W)`` of the output.

    Returns:
        float32 ``[B, D, H, W]``.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.ops.masks import paste_masks
    >>> masks = np.ones((1, 1, 2, 2), "float32")
    >>> pasted = paste_masks(masks, np.array([[[1, 1, 3, 3]]], "float32"), (4, 5))
    >>> np.asarray(pasted)[0, 0].tolist()
    [[0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]
    """
    if not isinstance(image_size, (list, tuple)) or len(image_size) != 2:
        raise ValueError(f"`image_size` must be a static (H, W) pair of positive integers, got {image_size!r}.")
    height, width = (require_positive_int("image_size", s) for s in image_size)
    masks = ops.cast(ops.convert_to_tensor(mask_probabilities), "float32")
    boxes = ops.cast(ops.convert_to_tensor(boxes), "float32")
    if len(masks.shape) != 4 or masks.shape[-1] is None or masks.shape[-1] != masks.shape[-2]:
        raise ValueError(f"`mask_probabilities` must be [B, D, m, m] with a static m, got shape {tuple(masks.shape)}.")
    if len(boxes.shape) != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"`boxes` must be [B, D, 4] xyxy boxes, got shape {tuple(boxes.shape)}.")
    size = masks.shape[-1]
    finite = ops.all(ops.isfinite(boxes), axis=-1)  # [B, D]
    boxes = ops.where(finite[..., None], boxes, 0.0)
    rows = _tent_weights(boxes[..., 1], boxes[..., 3], height, size)  # [B, D, H, m]
    cols = _tent_weights(boxes[..., 0], boxes[..., 2], width, size)  # [B, D, W, m]
    rows = rows * ops.cast(finite, "float32")[..., None, None]
    return ops.matmul(ops.matmul(rows, masks), ops.swapaxes(cols, -1, -2))
