"""Neighbor Transferring Module (NTM) of NETNet.

Paper: "Neighbor Erasing and Transferring Network for Better Single Shot Object Detection",
Y. Li, Y. Pang, J. Shen, J. Cao, L. Shao, CVPR 2020, arXiv 2001.06690 (Sec. 3).

The features that ``NeighborErasing`` removed from the shallow level p_s (p^e, larger
objects) are moved to the deeper level p_{s'}:

    p̃_{s'} = p_{s'} + T(p^e),    T(e) = act(Conv_{k×k, C→C'}(Pool_{r×r, stride r}(e)))

Shapes: ``erased`` (B, H, W, C), ``deep`` (B, H', W', C') with ceil(H / r) = H' and
ceil(W / r) = W'; output (B, H', W', C'). At 300 input NETNet pairs 38→10 and 19→5 (r = 4).

The paper defines T as down-sampling followed by a convolution and ⊕ as a combination; the
details are our choices (constructor arguments; no official code exists, and the third-party
re-implementation ``shuaiqi361/YorkU_2D_Detection_Benchmarking``, ``models/NETNet.py``, guided
the topology): r defaults to ceil(H / H'); pooling is average (third-party code) or max, in ceil
mode with windows aligned at the top-left and border windows reduced over their in-image
elements only (PyTorch ``ceil_mode=True``; TF's 'same' pooling would centre the padding
instead); the conv is 3×3 with bias and is followed by ReLU (the third-party code uses GroupNorm
+ Mish; no normalisation here); ⊕ is an element-wise sum. Parameters: k²·C·C' + C'.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_cvx.validation import require_choice, require_positive_int

POOL_TYPES = ("avg", "max")


def ceil_pool2d(x, factor, pool_type):
    """Non-overlapping ``factor``×``factor`` pooling of (B, H, W, C) in ceil mode.

    Output (B, ceil(H / r), ceil(W / r), C); windows start at multiples of r; a border window
    averages (or maxes) only its in-image elements, as PyTorch's ``ceil_mode=True``.
    """
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    out_h, out_w = math.ceil(height / factor), math.ceil(width / factor)
    padding = [[0, 0], [0, out_h * factor - height], [0, out_w * factor - width], [0, 0]]
    fill = 0.0 if pool_type == "avg" else float("-inf")
    if padding[1][1] or padding[2][1]:
        x = ops.pad(x, padding, constant_values=fill)
    windows = ops.reshape(x, (-1, out_h, factor, out_w, factor, channels))
    if pool_type == "max":
        return ops.max(windows, axis=(2, 4))
    rows = np.minimum(factor, height - factor * np.arange(out_h))
    cols = np.minimum(factor, width - factor * np.arange(out_w))
    counts = (rows[:, None] * cols[None, :]).astype("float32")[None, :, :, None]
    return ops.sum(windows, axis=(2, 4)) / ops.cast(counts, x.dtype)


def pooling_factor(name, shallow_shape, deep_shape, factor):
    """The pooling factor taking ``shallow_shape``'s spatial size to ``deep_shape``'s
    (``factor`` if given, else ceil(H / H')), checked on both spatial axes."""
    if factor is None:
        factor = max(1, math.ceil(shallow_shape[1] / deep_shape[1]))
    for axis in (1, 2):
        if math.ceil(shallow_shape[axis] / factor) != deep_shape[axis]:
            raise ValueError(
                f"`{name}`: pooling by {factor} in ceil mode takes {tuple(shallow_shape[1:3])} to "
                f"{tuple(math.ceil(s / factor) for s in shallow_shape[1:3])}, not {tuple(deep_shape[1:3])}."
            )
    return factor


@keras.saving.register_keras_serializable(package="keras_cvx")
class NeighborTransferring(keras.layers.Layer):
    """NETNet's Neighbor Transferring Module: ``p̃_{s'} = p_{s'} + act(Conv(Pool(p^e)))``.

    Paper: "Neighbor Erasing and Transferring Network for Better Single Shot Object Detection",
    Y. Li et al., CVPR 2020, https://arxiv.org/abs/2001.06690, Sec. 3 (NTM): the features
    ``p^e`` that ``NeighborErasing`` removed from the shallow level (larger objects) are
    down-sampled by ``r`` (ceil mode) and convolved onto the deeper level. The paper gives T as
    "down-sampling + convolution"; the details below are our choices (module docstring).

    Args:
        pool_size: down-sampling factor r (default None: ceil(H / H') from the input shapes).
        pool_type: ``"avg"`` (default, as the third-party code) or ``"max"``.
        kernel_size: k of the transfer conv (default 3).
        activation: applied after the transfer conv (default ``"relu"``; None for linear).
        kernel_initializer, bias_initializer: of the transfer conv.

    Call: ``layer(erased, deep)`` with ``erased`` (B, H, W, C) and ``deep`` (B, H', W', C'),
    ceil(H / r) = H' and ceil(W / r) = W' -> the updated deeper level (B, H', W', C').
    Parameters: k²·C·C' + C'.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.layers import NeighborTransferring
    >>> ntm = NeighborTransferring()
    >>> erased = np.ones((1, 38, 38, 8), "float32")      # NETNet300's pair 38 -> 10, r = 4
    >>> deep = np.ones((1, 10, 10, 16), "float32")
    >>> tuple(ntm(erased, deep).shape), ntm.count_params()     # 3·3·8·16 + 16
    ((1, 10, 10, 16), 1168)
    """

    def __init__(
        self,
        pool_size=None,
        pool_type="avg",
        kernel_size=3,
        activation="relu",
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.pool_size = None if pool_size is None else require_positive_int("pool_size", pool_size)
        self.pool_type = require_choice("pool_type", pool_type, POOL_TYPES)
        self.kernel_size = require_positive_int("kernel_size", kernel_size)
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, erased_shape, deep_shape):
        if len(erased_shape) != 4 or len(deep_shape) != 4:
            raise ValueError(
                f"`erased` and `deep` must be (B, H, W, C) tensors, got {erased_shape} and {deep_shape}."
            )
        self._factor = pooling_factor("pool_size", erased_shape, deep_shape, self.pool_size)
        self.transfer_conv = keras.layers.Conv2D(
            deep_shape[-1],
            self.kernel_size,
            padding="same",
            kernel_initializer=self.kernel_initializer.clone(),
            bias_initializer=self.bias_initializer.clone(),
            dtype=self.dtype_policy,
            name="transfer_conv",
        )
        self.transfer_conv.build(tuple(deep_shape[:3]) + (erased_shape[-1],))

    def transfer(self, erased):
        """``T(erased)``: (B, H', W', C')."""
        return self.activation(self.transfer_conv(ceil_pool2d(erased, self._factor, self.pool_type)))

    def call(self, erased, deep):
        return deep + ops.cast(self.transfer(erased), deep.dtype)

    def compute_output_shape(self, erased_shape, deep_shape):
        return tuple(deep_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            pool_size=self.pool_size,
            pool_type=self.pool_type,
            kernel_size=self.kernel_size,
            activation=keras.activations.serialize(self.activation),
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
        )
        return config
