"""τ-normalised classifier and learnable weight scaling (LWS), classifier re-balancing tools.

Paper: "Decoupling Representation and Classifier for Long-Tailed Recognition", B. Kang, S. Xie,
M. Rohrbach, Z. Yan, A. Gordo, J. Feng, Y. Kalantidis, ICLR 2020, arXiv 1910.09217, §4;
official code ``facebookresearch/classifier-balancing`` (``tau_norm.py``,
``models/TauNormClassifier.py``). Used with Equalization Loss ("Equalization Loss for Long-Tailed Object
Recognition", arXiv 2003.05176) as the decoupling baselines.

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
    """Linear classifier whose class vectors are divided by their norm to the power τ.

    Args:
        units: classes ``C``.
        tau: exponent ``τ >= 0``.
        epsilon: norm floor.
        kernel_initializer: for the ``[D, C]`` kernel (normally copied from a trained Dense
            with ``tau_normalized_from_dense``).

    Shapes: ``(B, ..., D)`` -> ``(B, ..., C)``. The norm is computed in float32.
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
    """A built ``TauNormalizedDense`` with the kernel of a trained ``keras.layers.Dense``
    (its bias is dropped, as the method prescribes; the Dense must have no activation)."""
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
    """LWS: per-class scales ``s`` [C] (init 1) multiplying the logits of a frozen classifier.

    Shapes: logits ``(B, ..., C)`` -> ``(B, ..., C)``.
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
