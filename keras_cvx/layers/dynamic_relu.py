"""Dynamic ReLU (DY-ReLU), types A, B and C.

Paper: "Dynamic ReLU", Y. Chen, X. Dai, M. Liu, D. Chen, L. Yuan, Z. Liu, ECCV 2020,
arXiv 2003.10027.

Equations (K linear pieces, input x of shape (B, ..., C)):

    θ(x) = 2σ(W2 · ReLU(W1 · mean_spatial(x) + c1) + c2) − 1           (hyper function)
    a^k  = α^k + λ_a · Δa^k,    b^k = β^k + λ_b · Δb^k                (residual form)
    y_c  = max_k ( a^k_c · x_c + b^k_c )

with α = (1, 0), β = (0, 0), λ_a = 1.0, λ_b = 0.5, so Δ = 0 gives ReLU. θ's outputs are in
the paper's order: all slopes a^1..a^K, then all intercepts b^1..b^K, channel index fastest.

* type A: a^k, b^k shared by all channels and positions (θ has 2K outputs);
* type B: per channel (θ has 2KC outputs);
* type C: as B, times a spatial attention π = min(γ · softmax(z / τ), 1) over the positions,
  z = Conv1×1_{C→1}(x) (with bias), γ = (number of positions) / 3, τ = 10. γ is the
  authors' (``microsoft/DynamicHead``, ``dyhead/dyrelu.py``, class ``DYReLU``); τ = 10 and the
  bias follow the ``Nyquixt/DynamicReLU`` re-implementation (DynamicHead puts a 1-channel
  BatchNorm on z instead of τ).

No official DY-ReLU code was released; the closest is ``DYReLU`` in ``microsoft/DynamicHead``
(an overlapping author group). Choices we could not confirm from the paper: hidden width
``max(1, C // reduction)`` with R = 4 (DynamicHead's and the re-implementations' default);
the hyper function has Keras's default random initialisation (Glorot-uniform kernels, zero
biases; the reference codes use their framework defaults too); ``init_as_relu=True``
zero-initialises the last FC so the layer starts as exactly ReLU (an option, not the paper).
θ and type C's softmax are computed in float32 under mixed precision (the coefficients are
tiny per-sample tensors, so this costs nothing).
"""

import keras
from keras import ops

from keras_cvx.validation import require_choice, require_positive, require_positive_int

VARIANTS = ("A", "B", "C")
NORMALIZATIONS = ("sigmoid", "hard_sigmoid")


@keras.saving.register_keras_serializable(package="keras_cvx")
class DynamicReLU(keras.layers.Layer):
    """Dynamic ReLU: ``y_c = max_k (a^k_c(x) · x_c + b^k_c(x))`` with input-dependent pieces.

    Paper: "Dynamic ReLU", Y. Chen et al., ECCV 2020, https://arxiv.org/abs/2003.10027. The
    hyper function ``θ(x) = 2σ(FC(ReLU(FC(mean_spatial x)))) − 1`` gives the residuals of the
    slopes and intercepts, ``a^k = α^k + λ_a Δa^k`` and ``b^k = β^k + λ_b Δb^k``; with the
    defaults ``α = (1, 0)``, ``β = (0, 0)`` the layer is ReLU when ``Δ = 0``. Types A (shared
    coefficients), B (per channel) and C (per channel times a spatial attention); the module
    docstring has the formulas and our choices where the paper is not specific.

    Args:
        variant: ``"A"`` (spatial- and channel-shared), ``"B"`` (channel-wise, default, the
            paper's choice for classification backbones) or ``"C"`` (channel-wise with spatial
            attention).
        reduction: ``R`` (default 4); the hyper function's hidden width is ``max(1, C // R)``.
        k: number of linear pieces ``K`` (default 2).
        lambda_a, lambda_b: residual ranges of the slopes and intercepts (defaults 1.0, 0.5).
        init_a, init_b: ``α`` and ``β``, one value per piece (defaults ``(1, 0)`` and ``(0, 0)``).
        temperature: ``τ`` of type C's spatial softmax (default 10).
        normalization: ``"sigmoid"`` (paper, 2σ(t) − 1) or ``"hard_sigmoid"`` (the authors'
            DynamicHead code, 2·relu6(t + 3)/6 − 1).
        init_as_relu: zero-initialise the last FC layer of the hyper function, so the layer
            starts as exactly ReLU (default False, not in the paper).
        kernel_initializer: of the hyper function's FC layers (default ``"glorot_uniform"``).

    Shapes: ``(B, ..., C)`` in and out (type C needs at least one spatial axis).
    Weights: type B at C = 64, R = 4 has 1.25·C² + 4.25·C = 5,392 parameters.

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.layers import DynamicReLU
    >>> x = np.array([[[[-1.0, 2.0], [0.5, -3.0]]]], "float32")      # (1, 1, 2, 2)
    >>> layer = DynamicReLU(init_as_relu=True)                       # Δ = 0: exactly ReLU
    >>> print(keras.ops.convert_to_numpy(layer(x))[0, 0])
    [[0.  2. ]
     [0.5 0. ]]
    >>> layer = DynamicReLU(variant="B", reduction=4)
    >>> layer.build((None, 8, 8, 64))
    >>> layer.count_params()
    5392
    """

    def __init__(
        self,
        variant="B",
        reduction=4,
        k=2,
        lambda_a=1.0,
        lambda_b=0.5,
        init_a=(1.0, 0.0),
        init_b=(0.0, 0.0),
        temperature=10.0,
        normalization="sigmoid",
        init_as_relu=False,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.variant = require_choice("variant", variant, VARIANTS)
        self.reduction = require_positive_int("reduction", reduction)
        self.k = require_positive_int("k", k)
        self.lambda_a = float(lambda_a)
        self.lambda_b = float(lambda_b)
        self.init_a = tuple(float(v) for v in init_a)
        self.init_b = tuple(float(v) for v in init_b)
        for name, values in (("init_a", self.init_a), ("init_b", self.init_b)):
            if len(values) != self.k:
                raise ValueError(f"`{name}` needs one value per piece (k={self.k}), got {values}.")
        self.temperature = require_positive("temperature", temperature)
        self.normalization = require_choice("normalization", normalization, NORMALIZATIONS)
        self.init_as_relu = bool(init_as_relu)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        if len(input_shape) < 3 or input_shape[-1] is None:
            raise ValueError(
                f"`inputs` must be channels-last with rank >= 3 and a known channel count, got {tuple(input_shape)}."
            )
        channels = int(input_shape[-1])
        self.input_spec = keras.InputSpec(ndim=len(input_shape), axes={-1: channels})
        self.channels = channels
        hidden = max(1, channels // self.reduction)
        outputs = 2 * self.k * (1 if self.variant == "A" else channels)
        last_initializer = "zeros" if self.init_as_relu else self.kernel_initializer
        self.squeeze = keras.layers.Dense(
            hidden, activation="relu", kernel_initializer=self.kernel_initializer.clone(), dtype="float32", name="fc1"
        )
        self.squeeze.build((input_shape[0], channels))
        self.coefficients = keras.layers.Dense(
            outputs, kernel_initializer=last_initializer, dtype="float32", name="fc2"
        )
        self.coefficients.build((input_shape[0], hidden))
        if self.variant == "C":
            self.spatial = keras.layers.Dense(1, kernel_initializer=self.kernel_initializer.clone(), dtype="float32", name="spatial")
            self.spatial.build((input_shape[0], channels))

    def _pieces(self, inputs):
        """Slopes and intercepts, each (B, K, 1) for type A or (B, K, C) otherwise, float32."""
        spatial_axes = tuple(range(1, len(inputs.shape) - 1))
        pooled = ops.mean(ops.cast(inputs, "float32"), axis=spatial_axes)
        logits = self.coefficients(self.squeeze(pooled))
        if self.normalization == "sigmoid":
            delta = 2.0 * ops.sigmoid(logits) - 1.0
        else:
            delta = 2.0 * ops.relu6(logits + 3.0) / 6.0 - 1.0
        delta = ops.reshape(delta, (-1, 2 * self.k, 1 if self.variant == "A" else self.channels))
        init_a = ops.convert_to_tensor(self.init_a, "float32")[None, :, None]
        init_b = ops.convert_to_tensor(self.init_b, "float32")[None, :, None]
        slopes = init_a + self.lambda_a * delta[:, : self.k]
        intercepts = init_b + self.lambda_b * delta[:, self.k :]
        return slopes, intercepts

    def spatial_attention(self, inputs):
        """Type C's π = min(γ · softmax(z / τ), 1), γ = positions / 3; shape (B, ..., 1), float32."""
        logits = self.spatial(ops.cast(inputs, "float32"))
        flat = ops.reshape(logits, (ops.shape(logits)[0], -1)) / self.temperature
        positions = ops.cast(ops.shape(flat)[1], "float32")
        attention = ops.minimum(ops.softmax(flat, axis=-1) * (positions / 3.0), 1.0)
        return ops.reshape(attention, ops.shape(logits))

    def call(self, inputs):
        slopes, intercepts = self._pieces(inputs)
        broadcast = (-1,) + (1,) * (len(inputs.shape) - 2) + (ops.shape(slopes)[-1],)
        outputs = None
        for piece in range(self.k):
            slope = ops.cast(ops.reshape(slopes[:, piece], broadcast), inputs.dtype)
            intercept = ops.cast(ops.reshape(intercepts[:, piece], broadcast), inputs.dtype)
            line = inputs * slope + intercept
            outputs = line if outputs is None else ops.maximum(outputs, line)
        if self.variant == "C":
            outputs = outputs * ops.cast(self.spatial_attention(inputs), inputs.dtype)
        return outputs

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            variant=self.variant,
            reduction=self.reduction,
            k=self.k,
            lambda_a=self.lambda_a,
            lambda_b=self.lambda_b,
            init_a=self.init_a,
            init_b=self.init_b,
            temperature=self.temperature,
            normalization=self.normalization,
            init_as_relu=self.init_as_relu,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config
