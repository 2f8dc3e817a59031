"""L2 normalisation with a learnable per-channel scale (SSD's ``conv4_3`` norm).

Paper: "ParseNet: Looking Wider to See Better", W. Liu, A. Rabinovich, A. C. Berg,
arXiv 1506.04579 (Sec. 3.3, Eq. 1-2), as used on VGG16 ``conv4_3`` by SSD ("SSD: Single Shot
MultiBox Detector", W. Liu et al., arXiv 1512.02325, Sec. 3.1) and by NETNet ("Neighbor
Erasing and Transferring Network for Better Single Shot Object Detection", Y. Li et al.,
CVPR 2020, arXiv 2001.06690), whose first pyramid level p1 is SSD's normalised ``conv4_3``.
In SSD-NET it is applied before the fusion module, so that the large ``conv4_3`` activations
do not dominate the fused sums.

    y_c = γ_c · x_c / sqrt(Σ_k x_k² + ε)

over the channel axis, γ initialised to ``scale_init`` (20 in SSD). The sum of squares is
computed in float32 whatever the dtype policy (512 ReLU activations of a few hundred would
overflow float16); the output has the compute dtype.

Deviation: amdegroot/ssd.pytorch divides by ``sqrt(Σ x²) + 1e-10``; we put ε inside the
square root (as ``keras.ops.normalize`` and Caffe's Normalize layer do). The two agree to
float32 rounding unless the whole channel vector is (almost) zero, where both give ≈ 0.
"""

import keras
from keras import ops

from keras_cvx.validation import require_positive


@keras.saving.register_keras_serializable(package="keras_cvx")
class L2Normalization(keras.layers.Layer):
    """Channel-wise L2 normalisation times a learnable per-channel scale: ``y_c = γ_c x_c / ‖x‖``.

    Paper: "ParseNet: Looking Wider to See Better", W. Liu et al.,
    https://arxiv.org/abs/1506.04579, Sec. 3.3, Eq. 1-2; SSD's ``conv4_3`` normalisation
    (https://arxiv.org/abs/1512.02325, Sec. 3.1), used the same way by NETNet
    (https://arxiv.org/abs/2001.06690). ``‖x‖ = sqrt(Σ_k x_k² + ε)`` over the channel axis.

    Args:
        scale_init: initial value of every ``γ_c`` (default 20, SSD's).
        epsilon: ``ε`` added to the sum of squares (default 1e-10).
        axis: the channel axis (default -1, NHWC).

    Shapes: any rank >= 2, unchanged. Weights: ``γ`` of shape ``(C,)``.

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.layers import L2Normalization
    >>> layer = L2Normalization(scale_init=20.0)
    >>> print(keras.ops.convert_to_numpy(layer(np.array([[3.0, 4.0]], "float32"))))
    [[12. 16.]]
    """

    def __init__(self, scale_init=20.0, epsilon=1e-10, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.scale_init = require_positive("scale_init", scale_init)
        self.epsilon = require_positive("epsilon", epsilon)
        self.axis = int(axis)

    def build(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(f"`inputs` of L2Normalization need rank >= 2, got shape {input_shape}.")
        channels = input_shape[self.axis]
        if channels is None:
            raise ValueError(f"`inputs` of L2Normalization need a known channel axis {self.axis}, got {input_shape}.")
        self.gamma = self.add_weight(
            name="gamma",
            shape=(channels,),
            initializer=keras.initializers.Constant(self.scale_init),
        )
        self._rank = len(input_shape)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        inverse_norm = ops.rsqrt(ops.sum(ops.square(x), axis=self.axis, keepdims=True) + self.epsilon)
        shape = [1] * self._rank
        shape[self.axis] = -1
        gamma = ops.reshape(ops.cast(self.gamma, "float32"), shape)
        return ops.cast(x * inverse_norm * gamma, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(scale_init=self.scale_init, epsilon=self.epsilon, axis=self.axis)
        return config
