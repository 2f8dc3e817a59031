"""CondInst's ``aligned_bilinear`` up-sampling ("Conditional Convolutions for Instance
Segmentation", arXiv 2003.05664; AdelaiDet ``aligned_bilinear``).

For an integer factor ``f`` and an axis of length ``h`` the output has length ``f h`` and

    out[k] = linear interpolation of in at clamp((k - floor(f / 2)) / f, 0, h - 1)

which is what the reference computes by replicate-padding one row/column at the end,
resizing with ``align_corners=True`` to ``f h + 1``, replicate-padding ``floor(f / 2)`` at
the start and cropping the first ``f h``. Here each axis is one matrix product with a static
``(f h, h)`` interpolation matrix (NHWC, static shapes, XLA friendly); ``f = 1`` is the identity.
``method="gather"`` computes the same values from the two neighbouring rows/columns of each
output position (2 taps instead of ``h``): cheaper for large outputs (CondInst's x4
post-processing of 100 masks to the input resolution), slower to differentiate.
The output has the input's dtype.
"""

import numpy as np
from keras import ops

from keras_cvx.validation import require_positive_int


def _taps(length, factor):
    """``(low, high, weight_high)`` of each output position along an axis of ``length``."""
    position = np.clip((np.arange(factor * length) - factor // 2) / factor, 0.0, length - 1)
    low = np.floor(position).astype(np.int32)
    return low, np.minimum(low + 1, length - 1).astype(np.int32), (position - low).astype(np.float32)


def _interpolation_matrix(length, factor):
    low, high, weight_high = _taps(length, factor)
    matrix = np.zeros((factor * length, length))
    rows = np.arange(factor * length)
    np.add.at(matrix, (rows, low), 1.0 - weight_high)
    np.add.at(matrix, (rows, high), weight_high)
    return matrix


def _interpolate_axis(x, axis, factor):
    low, high, weight = _taps(x.shape[axis], factor)
    shape = [1] * len(x.shape)
    shape[axis] = len(weight)
    weight = ops.convert_to_tensor(weight.reshape(shape), x.dtype)
    return ops.take(x, low, axis=axis) * (1.0 - weight) + ops.take(x, high, axis=axis) * weight


def aligned_bilinear(x, factor, method="matmul"):
    """Up-samples ``x`` by an integer factor as CondInst's ``aligned_bilinear`` does.

    Paper: "Conditional Convolutions for Instance Segmentation", Z. Tian et al.,
    https://arxiv.org/abs/2003.05664; AdelaiDet's ``adet/utils/comm.py`` ``aligned_bilinear``:
    along each axis of length h, ``out[k]`` interpolates the input at
    ``clamp((k − ⌊f / 2⌋) / f, 0, h − 1)`` (module docstring).

    Args:
        x: ``[B, H, W, C]``.
        factor: integer ``f`` (1 returns ``x``).
        method: ``"matmul"`` (default; one static interpolation matrix per axis) or
            ``"gather"`` (two taps per output position; cheaper for large outputs), same values.

    Returns: ``[B, f H, f W, C]`` in ``x``'s dtype.

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.ops import aligned_bilinear
    >>> x = np.array([0.0, 1.0], "float32").reshape(1, 1, 2, 1)
    >>> keras.ops.convert_to_numpy(aligned_bilinear(x, 2))[0, :, :, 0].tolist()
    [[0.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.5, 1.0]]
    """
    factor = require_positive_int("factor", factor)
    if method not in ("matmul", "gather"):
        raise ValueError(f"`method` must be 'matmul' or 'gather', got {method!r}.")
    if factor == 1:
        return x
    if method == "gather":
        return _interpolate_axis(_interpolate_axis(x, 1, factor), 2, factor)
    _, height, width, _ = x.shape
    rows = ops.convert_to_tensor(_interpolation_matrix(height, factor), x.dtype)
    cols = ops.convert_to_tensor(_interpolation_matrix(width, factor), x.dtype)
    return ops.einsum("oh,bhwc,pw->bopc", rows, x, cols)
