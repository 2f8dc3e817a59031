"""Cosine classifier: cosine similarities between features and class proxies.

Used by the class-level Circle loss ("Circle Loss: A Unified Perspective of Pair Similarity
Optimization", Y. Sun et al., CVPR 2020, arXiv 2002.10857, with class-level labels: the
similarity of a sample to each class is its cosine to the class's weight vector; NormFace /
CosFace-style heads):

    cos[b, c] = (x_b / ‖x_b‖) · (w_c / ‖w_c‖)

The proxies are the columns of a ``[D, C]`` kernel (Keras ``Dense`` layout), no bias.
Normalisation uses ``x · rsqrt(max(‖x‖², ε²))`` so a zero vector gives zeros with finite
gradients (``keras.ops.normalize`` has an infinite ``rsqrt`` gradient at zero).
Computed in float32 and returned as float32 under mixed policies: cosines times γ = 256 lose
~0.25 logit units in float16 (documented output dtype).
"""

import keras
from keras import ops

from keras_cvx.validation import require_positive, require_positive_int


def l2_normalize(x, axis=-1, epsilon=1e-12):
    """``x / max(‖x‖₂, ε)`` along ``axis``, with finite gradients at ``x = 0``."""
    square_sum = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(square_sum, epsilon * epsilon))


@keras.saving.register_keras_serializable(package="keras_cvx")
class CosineDense(keras.layers.Layer):
    """Cosine similarities to ``units`` learned class proxies: ``cos[b, c] = x̂_b · ŵ_c``.

    The class-level similarity of Circle Loss ("Circle Loss: A Unified Perspective of Pair
    Similarity Optimization", Y. Sun et al., CVPR 2020, https://arxiv.org/abs/2002.10857):
    ``x̂ = x / ‖x‖`` and ``ŵ_c = w_c / ‖w_c‖`` for the columns ``w_c`` of a ``[D, C]`` kernel, no
    bias. Feed the output to ``keras_cvx.losses.CircleLoss``.

    Args:
        units: number of classes ``C``.
        epsilon: norm floor ``ε`` of the normalisation (default 1e-12; a zero vector gives 0).
        kernel_initializer, kernel_regularizer: for the ``[D, C]`` proxy kernel (after
            normalisation only directions matter, so any standard initialiser works).

    Shapes: ``(B, ..., D)`` -> ``(B, ..., C)``, values in [−1, 1], float32 under every dtype
    policy.

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.layers import CosineDense
    >>> layer = CosineDense(3, kernel_initializer="identity")   # proxies: the unit axes
    >>> x = np.array([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0]], "float32")
    >>> print(np.round(keras.ops.convert_to_numpy(layer(x)), 3))
    [[1.    0.    0.   ]
     [0.707 0.707 0.   ]]
    """

    def __init__(self, units, epsilon=1e-12, kernel_initializer="glorot_uniform", kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.units = require_positive_int("units", units)
        self.epsilon = require_positive("epsilon", epsilon)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(f"`inputs` need a known last dimension, got {tuple(input_shape)}.")
        self.kernel = self.add_weight(
            name="kernel",
            shape=(int(input_shape[-1]), self.units),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            autocast=False,
        )

    def call(self, inputs):
        features = l2_normalize(ops.cast(inputs, "float32"), axis=-1, epsilon=self.epsilon)
        proxies = l2_normalize(ops.cast(self.kernel, "float32"), axis=0, epsilon=self.epsilon)
        return ops.matmul(features, proxies)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units,
            epsilon=self.epsilon,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
        )
        return config
