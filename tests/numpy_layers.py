"""Independent NumPy formulations of standard layers that several tests compare against:
'same' convolution (TensorFlow's padding), GroupNorm, BatchNorm at inference, and CondInst's
aligned_bilinear as the reference recipe (replicate pad, align_corners resize, shift, crop)."""

import numpy as np


def conv2d(x, kernel, bias=None, stride=1):
    """NHWC 'same' convolution with an odd kernel ``[k, k, C_in, C_out]`` (for stride 2, the
    extra padding row/column goes at the end, as TensorFlow/Keras pad)."""
    x = np.asarray(x, np.float64)
    k = kernel.shape[0]
    h, w = x.shape[1:3]
    out_h, out_w = -(-h // stride), -(-w // stride)
    pad_h = max((out_h - 1) * stride + k - h, 0)
    pad_w = max((out_w - 1) * stride + k - w, 0)
    padded = np.pad(x, [(0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)])
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
    for i in range(out_h):
        for j in range(out_w):
            patch = padded[:, i * stride : i * stride + k, j * stride : j * stride + k, :]
            out[:, i, j] = np.einsum("bhwc,hwco->bo", patch, kernel)
    return out if bias is None else out + bias


def group_norm(x, groups, gamma, beta, epsilon=1e-5):
    b, h, w, c = x.shape
    grouped = x.reshape(b, h, w, groups, c // groups)
    mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
    var = grouped.var(axis=(1, 2, 4), keepdims=True)
    return ((grouped - mean) / np.sqrt(var + epsilon)).reshape(x.shape) * gamma + beta


def batch_norm(x, gamma, beta, mean, var, epsilon=1e-5):
    return (x - mean) / np.sqrt(var + epsilon) * gamma + beta


def _aligned_axis(v, f):
    h = len(v)
    padded = np.concatenate([v, v[-1:]])
    positions = np.arange(f * h + 1) * h / (f * h)  # align_corners=True from h + 1 to f h + 1 samples
    resized = np.interp(positions, np.arange(h + 1), padded)
    resized = np.concatenate([np.repeat(resized[:1], f // 2), resized])
    return resized[: f * h]


def aligned_bilinear(x, factor):
    """``[B, H, W, C]`` -> ``[B, f H, f W, C]`` by AdelaiDet's recipe, axis by axis."""
    if factor == 1:
        return np.asarray(x, np.float64)
    out = np.apply_along_axis(_aligned_axis, 1, np.asarray(x, np.float64), factor)
    return np.apply_along_axis(_aligned_axis, 2, out, factor)
