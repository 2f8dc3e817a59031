"""ReZero residual gate and the ReZero Transformer encoder layer.

Paper: "ReZero is All You Need: Fast Convergence at Large Depth", T. Bachlechner,
B. P. Majumder, H. H. Mao, G. W. Cottrell, J. McAuley, arXiv 2003.04887 (UAI 2021).

Equation: x_{i+1} = x_i + α_i · F_i(x_i), one scalar α_i per layer, initialised to 0, so every
layer (and the whole stack) is exactly the identity at initialisation. No normalisation on the
residual path. The encoder layer follows the official ``RZTXEncoderLayer`` (majumderb/rezero):
one α shared by the attention and the feed-forward sublayers, no LayerNorm.
"""

import keras
from keras import ops

from keras_cvx.validation import require_positive_int, require_unit_interval


@keras.saving.register_keras_serializable(package="keras_cvx")
class ReZero(keras.layers.Layer):
    """ReZero residual gate: ``y = S(x) + α · F(x)`` with a trainable scalar ``α`` that starts at 0.

    Paper: "ReZero is All You Need: Fast Convergence at Large Depth", T. Bachlechner et al.,
    https://arxiv.org/abs/2003.04887: ``x_{i+1} = x_i + α_i F_i(x_i)``, ``α_i = 0`` at
    initialisation, no normalisation on the residual path.

    ``S(x)`` is the identity (``x``) or, for a block that changes the resolution or the width,
    a shortcut tensor passed in the call (the projection ``P(x)``, e.g. a strided 1×1 conv + BN
    computed outside the gate). At initialisation the layer is exactly ``S``: the identity, or
    the projection alone. This is how the authors' ReZNet (``tbachlechner/ReZero-examples``,
    ``ReZNet-6x_faster_ResNet_training_via_ReZero.ipynb``) gates every block of a ResNet,
    down-sampling blocks included (there with the option-A shortcut, here with whatever
    shortcut the caller computes).

    Args:
        layer: the residual branch ``F``: a Keras layer or model whose output shape equals its
            input shape, or the shape of ``shortcut`` when one is passed.
        alpha_initializer: initial value of ``α`` (default ``"zeros"``, the method's
            definition).

    Call arguments:
        inputs: ``x``, any ``(B, ..., D)``.
        shortcut: optional ``S(x)``, of ``F(x)``'s shape; ``None`` means ``x``.

    Shapes: the output has the shape of ``shortcut`` (or of ``x``). ``α`` is stored in float32
    under every dtype policy (it starts at 0 and receives small updates).

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.layers import ReZero
    >>> x = np.arange(8, dtype="float32").reshape(2, 4)
    >>> gate = ReZero(keras.layers.Dense(4))
    >>> bool(np.array_equal(keras.ops.convert_to_numpy(gate(x)), x))   # α = 0: the identity
    True
    >>> inputs = keras.Input((8, 8, 16))
    >>> branch = keras.Sequential([keras.Input((8, 8, 16)),
    ...                            keras.layers.Conv2D(32, 3, strides=2, padding="same")])
    >>> projection = keras.layers.Conv2D(32, 1, strides=2)(inputs)
    >>> outputs = ReZero(branch)(inputs, shortcut=projection)   # == projection at initialisation
    >>> tuple(outputs.shape)
    (None, 4, 4, 32)
    """

    def __init__(self, layer, alpha_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(f"`layer` must be a keras.layers.Layer, got {layer!r}.")
        self.layer = layer
        self.alpha_initializer = keras.initializers.get(alpha_initializer)

    def build(self, inputs_shape, shortcut_shape=None):
        if not self.layer.built:
            self.layer.build(inputs_shape)
        branch_shape = tuple(self.layer.compute_output_shape(inputs_shape))
        target = inputs_shape if shortcut_shape is None else shortcut_shape
        if tuple(branch_shape[1:]) != tuple(target[1:]):
            what = "its input" if shortcut_shape is None else "`shortcut`"
            raise ValueError(
                f"`layer` must map its input to the shape of {what} for a residual sum; it maps "
                f"{tuple(inputs_shape)} to {branch_shape}, but the sum needs {tuple(target)}."
            )
        self.alpha = self.add_weight(name="alpha", shape=(), initializer=self.alpha_initializer, dtype="float32")

    def call(self, inputs, shortcut=None, training=None):
        base = inputs if shortcut is None else shortcut
        branch = ops.cast(self.layer(inputs, training=training), base.dtype)
        return base + ops.cast(self.alpha, base.dtype) * branch

    def compute_output_shape(self, inputs_shape, shortcut_shape=None):
        return tuple(inputs_shape if shortcut_shape is None else shortcut_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            layer=keras.saving.serialize_keras_object(self.layer),
            alpha_initializer=keras.initializers.serialize(self.alpha_initializer),
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_cvx")
class ReZeroTransformerEncoder(keras.layers.Layer):
    """One ReZero Transformer encoder layer (official ``RZTXEncoderLayer``), no LayerNorm.

    Paper: "ReZero is All You Need: Fast Convergence at Large Depth", T. Bachlechner et al.,
    https://arxiv.org/abs/2003.04887; official code ``majumderb/rezero``
    (``rezero/transformer.py``, ``RZTXEncoderLayer``)::

        a   = MultiHeadSelfAttention(x)                 (attention dropout = `dropout`)
        h   = x + Dropout(α · a)
        f   = Dense_{d_ff→d}(Dropout(act(Dense_{d→d_ff}(h))))
        out = h + Dropout(α · f)

    with one scalar ``α`` (init 0) shared by both sublayers, so a fresh layer is the identity.

    Args:
        num_heads: attention heads; the model width ``d`` must be divisible by it.
        feedforward_dim: ``d_ff`` (default 2048, as the reference code).
        dropout: dropout rate of the attention weights and of both residual branches
            (default 0.1).
        activation: the feed-forward activation (``"relu"``, default, or ``"gelu"`` in the
            reference).
        kernel_initializer: initializer of all projection matrices (the authors' examples use
            Xavier-uniform, i.e. ``"glorot_uniform"``, the default).

    Call arguments:
        inputs: ``(B, L, d)``.
        padding_mask: optional ``(B, L)``, 1/True for real tokens, 0/False for padding keys.
        attention_mask: optional ``(B, L, L)``, 1/True where query ``i`` may attend key ``j``.

    Output: ``(B, L, d)``.

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.layers import ReZeroTransformerEncoder
    >>> x = np.random.default_rng(0).normal(size=(1, 5, 8)).astype("float32")
    >>> layer = ReZeroTransformerEncoder(num_heads=2, feedforward_dim=16)
    >>> y = keras.ops.convert_to_numpy(layer(x))
    >>> y.shape, bool(np.allclose(y, x))       # α = 0: the identity at initialisation
    ((1, 5, 8), True)
    """

    def __init__(
        self,
        num_heads,
        feedforward_dim=2048,
        dropout=0.1,
        activation="relu",
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = require_positive_int("num_heads", num_heads)
        self.feedforward_dim = require_positive_int("feedforward_dim", feedforward_dim)
        self.dropout = require_unit_interval("dropout", dropout)
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(f"`inputs` must have shape (batch, length, width), got {tuple(input_shape)}.")
        width = int(input_shape[-1])
        if width % self.num_heads:
            raise ValueError(f"`num_heads`={self.num_heads} must divide the model width {width}.")
        self.attention = keras.layers.MultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=width // self.num_heads,
            dropout=self.dropout,
            kernel_initializer=self.kernel_initializer.clone(),
            dtype=self.dtype_policy,
            name="self_attention",
        )
        self.attention.build(input_shape, input_shape)
        self.feedforward_in = keras.layers.Dense(
            self.feedforward_dim, kernel_initializer=self.kernel_initializer.clone(), dtype=self.dtype_policy, name="ff_in"
        )
        self.feedforward_in.build(input_shape)
        self.feedforward_out = keras.layers.Dense(
            width, kernel_initializer=self.kernel_initializer.clone(), dtype=self.dtype_policy, name="ff_out"
        )
        self.feedforward_out.build(tuple(input_shape[:-1]) + (self.feedforward_dim,))
        self.residual_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.alpha = self.add_weight(name="alpha", shape=(), initializer="zeros", dtype="float32")

    def call(self, inputs, padding_mask=None, attention_mask=None, training=None):
        mask = _combine_masks(padding_mask, attention_mask)
        alpha = ops.cast(self.alpha, inputs.dtype)
        attended = self.attention(inputs, inputs, attention_mask=mask, training=training)
        hidden = inputs + self.residual_dropout(alpha * attended, training=training)
        expanded = self.residual_dropout(self.activation(self.feedforward_in(hidden)), training=training)
        return hidden + self.residual_dropout(alpha * self.feedforward_out(expanded), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            feedforward_dim=self.feedforward_dim,
            dropout=self.dropout,
            activation=keras.activations.serialize(self.activation),
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config


def _combine_masks(padding_mask, attention_mask):
    """(B, L) key padding mask and (B, L, L) attention mask -> one boolean (B, L, L) or None."""
    mask = None
    if padding_mask is not None:
        mask = ops.cast(padding_mask, "bool")[:, None, :]
    if attention_mask is not None:
        attention_mask = ops.cast(attention_mask, "bool")
        mask = attention_mask if mask is None else ops.logical_and(mask, attention_mask)
    return mask
