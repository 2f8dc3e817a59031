"""Nearest Neighbor Fusion Module (NNFM) of NETNet.

Paper: "Neighbor Erasing and Transferring Network for Better Single Shot Object Detection",
Y. Li, Y. Pang, J. Shen, J. Cao, L. Shao, CVPR 2020, arXiv 2001.06690 (Sec. 3).

Each pyramid level is fused with its nearest neighbours only (not a full top-down path):

    q_s = act( H_{s−1}(p_{s−1}) + H_s(p_s) + H_{s+1}(p_{s+1}) )
    H_{s−1} = Conv1×1 ∘ Pool_{r×r, stride r}    (r = ``pool_size``, 2 in NETNet)
    H_s     = Conv1×1
    H_{s+1} = Conv1×1 then bilinear resize to p_s's exact size (10→19, 5→10 at 300)

Shapes: ``current`` (B, H, W, C_s), optional ``shallower`` (B, H_{s−1}, W_{s−1}, C_{s−1}) with
ceil(H_{s−1} / r) = H, optional ``deeper`` (B, H_{s+1}, W_{s+1}, C_{s+1}); output
(B, H, W, filters). A level without one of its neighbours (the first or last one fused)
omits that term.

Choices the paper leaves open (constructor arguments; no official code exists, the third-party
re-implementation ``shuaiqi361/YorkU_2D_Detection_Benchmarking`` guided them): ⊕ is a sum;
``filters`` = 256 (the common width NTM needs, as in the third-party code); pooling is max, r =
2, in ceil mode (windows aligned at the top-left, PyTorch ``ceil_mode=True``: 75→38 and 19→10 at
300; for r = 2 this equals Keras ``padding="same"`` pooling, whose single padded row/column is
at the bottom/right); one ReLU after the sum (the third-party code has GroupNorm + Mish after
every conv; no normalisation here). Only H_s has a bias: the three biases of a sum are one. The
paper up-samples before H_{s+1}'s conv; we convolve first (cheaper, equal up to rounding: both
are linear and the bilinear weights sum to 1). Resizing is half-pixel bilinear
(``keras.ops.image.resize``). Parameters: filters · (C_{s−1} + C_s + C_{s+1} + 1).
"""

import keras
from keras import ops

from keras_cvx.layers.neighbor_transferring import POOL_TYPES, ceil_pool2d, pooling_factor
from keras_cvx.validation import require_choice, require_positive_int


@keras.saving.register_keras_serializable(package="keras_cvx")
class NearestNeighborFusion(keras.layers.Layer):
    """NETNet's Nearest Neighbor Fusion Module: a level plus its pooled and up-sampled neighbours.

    Paper: "Neighbor Erasing and Transferring Network for Better Single Shot Object Detection",
    Y. Li et al., CVPR 2020, https://arxiv.org/abs/2001.06690, Sec. 3 (NNFM)::

        q_s = act(H_{s−1}(p_{s−1}) + H_s(p_s) + H_{s+1}(p_{s+1}))
        H_{s−1} = Conv1×1 ∘ Pool_r,   H_s = Conv1×1,   H_{s+1} = resize ∘ Conv1×1

    Args:
        filters: output channels, the common width of the fused levels (default 256).
        pool_size: down-sampling factor r of the shallower neighbour (default 2, ceil mode).
        pool_type: ``"max"`` (default) or ``"avg"`` down-sampling of the shallower neighbour.
        activation: applied after the sum (default ``"relu"``; None for linear).
        kernel_initializer, bias_initializer: of the 1×1 convs.

    Call: ``layer(current, shallower=None, deeper=None)`` with ``current`` (B, H, W, C_s),
    ``shallower`` (B, H_{s−1}, W_{s−1}, C_{s−1}) where ceil(H_{s−1} / r) = H, ``deeper`` of any
    smaller size -> (B, H, W, filters). Parameters: filters · (C_{s−1} + C_s + C_{s+1} + 1).

    Example:

    >>> import numpy as np
    >>> from keras_cvx.layers import NearestNeighborFusion
    >>> nnfm = NearestNeighborFusion(filters=16)
    >>> current = np.ones((1, 19, 19, 32), "float32")
    >>> q = nnfm(current, shallower=np.ones((1, 38, 38, 16), "float32"),
    ...          deeper=np.ones((1, 10, 10, 8), "float32"))
    >>> tuple(q.shape), nnfm.count_params()                 # 16 · (16 + 32 + 8 + 1)
    ((1, 19, 19, 16), 912)
    """

    def __init__(
        self,
        filters=256,
        pool_size=2,
        pool_type="max",
        activation="relu",
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = require_positive_int("filters", filters)
        self.pool_size = require_positive_int("pool_size", pool_size)
        self.pool_type = require_choice("pool_type", pool_type, POOL_TYPES)
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def _projection(self, name, use_bias, input_shape):
        conv = keras.layers.Conv2D(
            self.filters,
            1,
            use_bias=use_bias,
            kernel_initializer=self.kernel_initializer.clone(),
            bias_initializer=self.bias_initializer.clone(),
            dtype=self.dtype_policy,
            name=name,
        )
        conv.build(tuple(input_shape))
        return conv

    def build(self, current_shape, shallower_shape=None, deeper_shape=None):
        for name, shape in (("current", current_shape), ("shallower", shallower_shape), ("deeper", deeper_shape)):
            if shape is not None and len(shape) != 4:
                raise ValueError(f"`{name}` must be a (B, H, W, C) tensor, got shape {shape}.")
        self.current_conv = self._projection("current_conv", True, current_shape)
        self.shallower_conv = None
        self.deeper_conv = None
        if shallower_shape is not None:
            pooling_factor("shallower", shallower_shape, current_shape, self.pool_size)
            self.shallower_conv = self._projection("shallower_conv", False, shallower_shape)
        if deeper_shape is not None:
            self.deeper_conv = self._projection("deeper_conv", False, deeper_shape)

    def call(self, current, shallower=None, deeper=None):
        fused = self.current_conv(current)
        if shallower is not None:
            fused = fused + self.shallower_conv(ceil_pool2d(shallower, self.pool_size, self.pool_type))
        if deeper is not None:
            projected = self.deeper_conv(deeper)
            size = tuple(current.shape[1:3])
            if tuple(projected.shape[1:3]) != size:
                # float32: TF's XLA has no bfloat16 bilinear resize (mixed_bfloat16 + jit_compile).
                projected = ops.image.resize(ops.cast(projected, "float32"), size, interpolation="bilinear")
            fused = fused + ops.cast(projected, fused.dtype)
        return self.activation(fused)

    def compute_output_shape(self, current_shape, shallower_shape=None, deeper_shape=None):
        return tuple(current_shape[:3]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            pool_size=self.pool_size,
            pool_type=self.pool_type,
            activation=keras.activations.serialize(self.activation),
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
        )
        return config
