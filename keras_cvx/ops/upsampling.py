"""CondInst's ``aligned_bilinear`` up-sampling ("Conditional Convolutions for Instance
Segmentation", arXiv 2003.05664; AdelaiDet ``aligned_bilinear``).

For an integer factor ``f`` and an axis of length ``h`` the output has length ``f h`` and

    out[k] = linear interpolation of in at clamp((k - floor(f / 2)) / f, 0, h - 1)

which is what the reference computes by replicate-padding one row/column at the end,
resizing with ``align_corners=True`` to ``f h + 1``, replicate-padding ``floor(f / 2)`` at
the start and cropping the first ``f h``. Here each axis is one matrix product with a static
``(f h, h)`` interpolation matrix (NHWC, static shapes, XLA friendly); ``f = 1`` is the identity.
The output has the input's dtype.
"""

import numpy as np
from keras import ops

from keras_cvx.validation import require_positive_int


def _interpolation_matrix(length, factor):
    position = np.clip((np.arange(factor * length) - factor // 2) / factor, 0.0, length - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, length - 1)
    weight_high = position - low
    matrix = np.zeros((factor * length, length))
    rows = np.arange(factor * length)
    np.add.at(matrix, (rows, low), 1.0 - weight_high)
    np.add.at(matrix, (rows, high), weight_high)
    return matrix


def aligned_bilinear(x, factor):
    """Up-samples ``x [B, H, W, C]`` to ``[B, f H, f W, C]`` as CondInst does."""
    factor = require_positive_int("factor", factor)
    if factor == 1:
        return x
    _, height, width, _ = x.shape
    rows = ops.convert_to_tensor(_interpolation_matrix(height, factor), x.dtype)
    cols = ops.convert_to_tensor(_interpolation_matrix(width, factor), x.dtype)
    return ops.einsum("oh,bhwc,pw->bopc", rows, x, cols)
