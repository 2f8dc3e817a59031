"""τ-normalised classifier and learnable weight scaling (LWS), classifier re-balancing tools.

Paper: "Decoupling Representation and Classifier for Long-Tailed Recognition", B. Kang, S. Xie,
M. Rohrbach, Z. Yan, A. Gordo, J. Feng, Y. Kalantidis, ICLR 2020, arXiv 1910.09217, §4;
official code ``facebookresearch/classifier-balancing`` (``tau_norm.py``,
``models/TauNormClassifier.py``). Used with Equalization Loss ("Equalization Loss for Long-Tailed
Object Recognition", arXiv 2003.05176) as the decoupling baselines.

τ-normalisation (no training):   w̃_c = w_c / ‖w_c‖₂^τ,   logits = x · w̃_c   (bias dropped)
    τ = 0: unchanged weights; τ = 1: cosine-like classifier. The official ``tau_norm.py`` sweeps
    τ in 0.0..2.0 on the validation set.
LWS (learnable weight scaling):  logits_c = s_c · (x · w_c + b_c),  s_c initialised to 1
    — the official classifier-balancing code scales the whole logit, bias included (the paper
    writes w_c ← s_c w_c; identical when the bias is 0). Train only s with class-balanced
    sampling and the classifier frozen.
"""

import keras
from keras import ops

from keras_cvx.validation import require_positive, require_positive_int


@keras.saving.register_keras_serializable(package="keras_cvx")
class TauNormalizedDense(keras.layers.Layer):
    """τ-normalised linear classifier: ``logits_c = x · w_c / ‖w_c‖^τ`` (no bias).

    Paper: "Decoupling Representation and Classifier for Long-Tailed Recognition", B. Kang et
    al., ICLR 2020, https://arxiv.org/abs/1910.09217, §4 (τ-normalisation); official code
    ``facebookresearch/classifier-balancing`` (``tau_norm.py``). ``τ = 0`` leaves the weights
    unchanged, ``τ = 1`` gives a cosine-like classifier; the official code sweeps τ in 0.0..2.0
    on the validation set.

    Args:
        units: classes ``C``.
        tau: exponent ``τ >= 0`` (default 1.0).
        epsilon: norm floor (default 1e-12).
        kernel_initializer: for the ``[D, C]`` kernel (normally copied from a trained Dense
            with ``tau_normalized_from_dense``).

    Shapes: ``(B, ..., D)`` -> ``(B, ..., C)``. The norm is computed in float32.

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.layers import TauNormalizedDense
    >>> kernel = np.array([[3.0, 0.0], [4.0, 2.0]], "float32")      # class vectors (3, 4), (0, 2)
    >>> layer = TauNormalizedDense(2, tau=1.0, kernel_initializer=keras.initializers.Constant(kernel))
    >>> print(np.round(keras.ops.convert_to_numpy(layer(np.array([[1.0, 1.0]], "float32"))), 4))
    [[1.4 1. ]]
    """

    def __init__(self, units, tau=1.0, epsilon=1e-12, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.units = require_positive_int("units", units)
        self.tau = float(tau)
        if self.tau < 0:
            raise ValueError(f"`tau` must be >= 0, got {tau!r}.")
        self.epsilon = require_positive("epsilon", epsilon)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        self.kernel = self.add_weight(
            name="kernel", shape=(int(input_shape[-1]), self.units), initializer=self.kernel_initializer, autocast=False
        )

    def normalized_kernel(self):
        kernel = ops.cast(self.kernel, "float32")
        norms = ops.maximum(ops.sqrt(ops.sum(ops.square(kernel), axis=0, keepdims=True)), self.epsilon)
        return kernel / ops.power(norms, self.tau)

    def call(self, inputs):
        return ops.matmul(inputs, ops.cast(self.normalized_kernel(), inputs.dtype))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units,
            tau=self.tau,
            epsilon=self.epsilon,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config


def tau_normalized_from_dense(dense, tau=1.0, **kwargs):
    """A built ``TauNormalizedDense`` with the kernel of a trained ``keras.layers.Dense``.

    τ-normalisation of "Decoupling Representation and Classifier for Long-Tailed Recognition"
    (https://arxiv.org/abs/1910.09217, §4): the bias is dropped, as the method prescribes.

    Args:
        dense: a built ``keras.layers.Dense`` with a linear activation (the classifier's logits).
        tau: exponent ``τ`` (default 1.0).
        **kwargs: further ``TauNormalizedDense`` arguments (``epsilon``, ``name``, ...).

    Returns: a built ``TauNormalizedDense(dense.units, tau)`` holding a copy of ``dense.kernel``
    (``[D, C]``); it maps ``(B, ..., D)`` to ``(B, ..., C)``.

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.layers import tau_normalized_from_dense
    >>> dense = keras.layers.Dense(2)
    >>> dense.build((None, 2))
    >>> dense.set_weights([np.array([[3.0, 0.0], [4.0, 2.0]], "float32"), np.ones(2, "float32")])
    >>> layer = tau_normalized_from_dense(dense, tau=0.0)          # τ = 0: the Dense without bias
    >>> print(keras.ops.convert_to_numpy(layer(np.array([[1.0, 1.0]], "float32"))))
    [[7. 2.]]
    """
    if not isinstance(dense, keras.layers.Dense) or not dense.built:
        raise ValueError(f"`dense` must be a built keras.layers.Dense, got {dense!r}.")
    if dense.activation is not keras.activations.linear:
        raise ValueError("`dense` must have a linear activation (the classifier's logits).")
    kernel = ops.convert_to_numpy(dense.kernel)
    layer = TauNormalizedDense(dense.units, tau=tau, **kwargs)
    layer.build((None, kernel.shape[0]))
    layer.kernel.assign(kernel)
    return layer


@keras.saving.register_keras_serializable(package="keras_cvx")
class LearnableWeightScaling(keras.layers.Layer):
    """Learnable weight scaling (LWS): per-class scales ``s`` [C] (init 1) times a classifier's logits.

    Paper: "Decoupling Representation and Classifier for Long-Tailed Recognition", B. Kang et
    al., ICLR 2020, https://arxiv.org/abs/1910.09217, §4 (LWS). ``logits_c ← s_c · logits_c``:
    the official code (``facebookresearch/classifier-balancing``, ``models/TauNormClassifier.py``)
    scales the whole logit, bias included; the paper writes ``w_c ← s_c w_c`` (identical when
    the bias is 0). Train only ``s``, with class-balanced sampling and the classifier frozen.

    Args:
        scale_initializer: initial ``s`` (default ``"ones"``: the classifier unchanged).

    Shapes: logits ``(B, ..., C)`` -> ``(B, ..., C)``.

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.layers import LearnableWeightScaling
    >>> lws = LearnableWeightScaling()
    >>> print(keras.ops.convert_to_numpy(lws(np.array([[2.0, -1.0]], "float32"))))
    [[ 2. -1.]]
    """

    def __init__(self, scale_initializer="ones", **kwargs):
        super().__init__(**kwargs)
        self.scale_initializer = keras.initializers.get(scale_initializer)

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(int(input_shape[-1]),), initializer=self.scale_initializer)

    def call(self, inputs):
        return inputs * ops.cast(self.scale, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(scale_initializer=keras.initializers.serialize(self.scale_initializer))
        return config
