"""The Faster R-CNN + FPN RoI box head ("2fc"), the "sibling head" that TSD revisits.

Papers: "Feature Pyramid Networks for Object Detection", T.-Y. Lin et al., CVPR 2017,
arXiv 1612.03144, Sec. 4.2 (two hidden 1024-d fc layers, each followed by ReLU, before the
final classification and bounding-box regression layers); "Revisiting the Sibling Head in
Object Detector", G. Song, Y. Liu, X. Wang, CVPR 2020, arXiv 2003.07540, eq. 1 (the sibling
head ``H_1``/``H_2``: classification and localization from the same feature ``F`` of the
proposal ``P``). Classifier variants for "Equalization Loss for Long-Tailed Object
Recognition", J. Tan et al., CVPR 2020, arXiv 2003.05176, Sec. 3.2/4.1 (sigmoid classifier
without a background logit, prior bias) and its v2, arXiv 2012.08548 (sigmoid over ``K + 1``
columns, the prior on every column)::

    f = flatten(F)                                  F: [B, R, h, w, C] -> [B, R, h w C]
    x = ReLU(Dense_{1024}(f)), x = ReLU(Dense_{1024}(x))          (``num_hidden`` = 2)
    class_logits = Dense_{n}(x)                                    n = num_outputs
    box_deltas   = reshape(Dense_{4 n}(x), [B, R, n, 4])          one (t_x, t_y, t_w, t_h) per output

``classification_loss`` and the outputs (``K = num_classes`` object classes, labels
``0..K-1``, background ``K``):

============  ===========  ====================================================================
loss          ``n``        class output bias
============  ===========  ====================================================================
"softmax"     ``K + 1``    0 (column ``K`` = background, last)
"eqlv2"       ``K + 1``    ``-log((1 - π) / π)`` on every column, background included (EQL v2)
"sigmoid"     ``K``        ``-log((1 - π) / π)``; no background logit (a RoI is background
"eql"         ``K``        when no class fires), as Detectron2's EQL head
============  ===========  ====================================================================

with ``π = prior_probability = 0.001`` (bias -6.9068, initial probability 0.001). Box deltas
are class-specific, one set per classification output: ``4 (K + 1)`` = 324 for K = 80 with a
softmax (mmdet v1's reference code, whose background slot is unused), ``4 K`` for
sigmoid/EQL (Detectron2's EQL head).

Initialisation (mmdet v1 ``ConvFCBBoxHead`` / Detectron2 ``FastRCNNConvFCHead``): hidden
Dense weights N(0, 1/fan_in) (PyTorch's ``kaiming_normal_(a=1)``), biases 0; class layer
N(0, 0.01²); delta layer N(0, 0.001²), bias 0.

Parameters for K = 80 (softmax) on 7x7x256 RoI features: 14,310,805
(12544·1024 + 1024 + 1024·1024 + 1024 + 1024·81 + 81 + 1024·324 + 324).

Differences from the reference implementation: background is the last class (mmdet v1: first);
the RoI features are flattened in NHWC order ``(h, w, C)`` where PyTorch flattens ``(C, h, w)``,
so porting PyTorch weights to the first hidden layer needs the row permutation
``kernel_keras[(i w + j) C + c, :] = weight_torch[:, (c h + i) w + j]`` (bin row ``i``, column
``j``, channel ``c``); the outputs are a padded batch ``[B, R, ...]`` instead of rows ``[N, ...]``.
"""

import math

import keras
from keras import ops

from keras_cvx.validation import require_choice, require_positive_int, require_unit_interval

CLASSIFICATION_LOSSES = ("softmax", "sigmoid", "eql", "eqlv2")
"""Classifiers a box head can be trained with (see the module docstring)."""

_WITH_BACKGROUND_COLUMN = ("softmax", "eqlv2")


def classification_outputs(num_classes, classification_loss):
    """Number of classification outputs: ``K + 1`` (background last) for "softmax" and "eqlv2",
    ``K`` for "sigmoid" and "eql" (no background logit)."""
    require_choice("classification_loss", classification_loss, CLASSIFICATION_LOSSES)
    return num_classes + 1 if classification_loss in _WITH_BACKGROUND_COLUMN else num_classes


def prior_bias(prior_probability):
    """``-log((1 - π) / π)``: the logit whose sigmoid is ``π``."""
    return -math.log((1.0 - prior_probability) / prior_probability)


def set_classifier_arguments(layer, num_classes, classification_loss, hidden_units, prior_probability):
    """Validates the classifier arguments shared by the box heads and sets them on ``layer``
    (with ``num_outputs``)."""
    layer.num_classes = require_positive_int("num_classes", num_classes)
    layer.classification_loss = require_choice("classification_loss", classification_loss, CLASSIFICATION_LOSSES)
    layer.hidden_units = require_positive_int("hidden_units", hidden_units)
    layer.prior_probability = require_unit_interval("prior_probability", prior_probability)
    if not layer.prior_probability > 0:
        raise ValueError(f"`prior_probability` must be in (0, 1), got {prior_probability!r}.")
    layer.num_outputs = classification_outputs(layer.num_classes, layer.classification_loss)


def require_non_negative_int(name, value):
    """``value`` when it is a Python int >= 0 (a ``ValueError`` naming ``name`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative integer, got {value!r}.")
    return value


def kaiming_fan_in():
    """PyTorch's ``kaiming_normal_(a=1, mode="fan_in")``: N(0, 1/fan_in). A new instance for every
    layer (Keras initializers fix their seed when made)."""
    return keras.initializers.VarianceScaling(1.0, "fan_in", "untruncated_normal")


def torch_linear_default(fan_in):
    """PyTorch's default ``nn.Linear`` initialisation: weight and bias U(±1/sqrt(fan_in))."""
    limit = 1.0 / math.sqrt(fan_in)
    return (keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
            keras.initializers.RandomUniform(-limit, limit))


def hidden_layers(units, count, prefix, policy):
    """``count`` Dense layers (N(0, 1/fan_in) weights, zero bias), applied with ``run_hidden``."""
    return [keras.layers.Dense(units, kernel_initializer=kaiming_fan_in(), dtype=policy, name=f"{prefix}{i}")
            for i in range(count)]


def run_hidden(layers, x):
    """Dense + ReLU for every layer of ``layers``."""
    for layer in layers:
        x = ops.relu(layer(x))
    return x


def build_chain(layers, units):
    """Builds ``layers`` one after the other from an input of ``units`` features; returns the
    output width."""
    for layer in layers:
        layer.build((None, None, units))
        units = layer.units
    return units


def flatten_rois(x):
    """``[B, R, h, w, C]`` -> ``[B, R, h w C]`` (NHWC order)."""
    shape = ops.shape(x)
    return ops.reshape(x, (shape[0], shape[1], math.prod(x.shape[2:])))


def check_roi_shape(shape, name="roi_features"):
    """ValueError unless ``shape`` is ``(B, R, h, w, C)`` with known ``h, w, C``; returns ``h w C``."""
    shape = tuple(shape)
    if len(shape) != 5 or None in shape[2:]:
        raise ValueError(f"`{name}` must be [B, R, h, w, C] with known h, w, C, got shape {shape}.")
    return math.prod(shape[2:])


def split_deltas(deltas, num_outputs):
    """``[B, R, 4 n]`` -> ``[B, R, n, 4]``."""
    shape = ops.shape(deltas)
    return ops.reshape(deltas, (shape[0], shape[1], num_outputs, 4))


@keras.saving.register_keras_serializable(package="keras_cvx")
class SiblingBoxHead(keras.layers.Layer):
    """Faster R-CNN + FPN "2fc" box head: classification and class-specific box deltas from one
    RoI feature (FPN arXiv 1612.03144 Sec. 4.2; TSD arXiv 2003.07540 eq. 1; module docstring).

    Args:
        num_classes: object classes ``K`` (labels ``0..K-1``, background ``K``).
        classification_loss: "softmax" (default), "sigmoid", "eql" or "eqlv2": decides the
            number of outputs (``K + 1`` for "softmax"/"eqlv2", ``K`` for "sigmoid"/"eql") and
            the class bias (0 for "softmax", the prior otherwise).
        hidden_units: width of the hidden fc layers (default 1024).
        num_hidden: hidden fc + ReLU layers (default 2; 0 puts the outputs on the flattened
            features).
        prior_probability: ``π`` of the class bias ``-log((1 - π) / π)`` for "sigmoid", "eql"
            and "eqlv2" (default 0.001, EQL's; unused by "softmax").

    Call: ``head(roi_features)`` with ``roi_features`` ``[B, R, h, w, C]`` (flattened in NHWC
    order) -> ``{"class_logits": [B, R, n], "box_deltas": [B, R, n, 4]}`` with
    ``n = head.num_outputs``, in the compute dtype.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.heads.roi_box import SiblingBoxHead
    >>> head = SiblingBoxHead(num_classes=3, hidden_units=8)
    >>> out = head(np.ones((2, 5, 7, 7, 4), "float32"))
    >>> head.num_outputs, tuple(out["class_logits"].shape), tuple(out["box_deltas"].shape)
    (4, (2, 5, 4), (2, 5, 4, 4))

    Differences from the reference implementation: background last (mmdet v1: first); NHWC
    flatten order (porting PyTorch weights to the first hidden layer needs a row permutation,
    see the module docstring).
    """

    def __init__(self, num_classes, classification_loss="softmax", hidden_units=1024, num_hidden=2,
                 prior_probability=0.001, **kwargs):
        super().__init__(**kwargs)
        set_classifier_arguments(self, num_classes, classification_loss, hidden_units, prior_probability)
        self.num_hidden = require_non_negative_int("num_hidden", num_hidden)
        policy = self.dtype_policy
        self.hidden = hidden_layers(self.hidden_units, self.num_hidden, "fc", policy)
        class_bias = "zeros" if self.classification_loss == "softmax" else keras.initializers.Constant(
            prior_bias(self.prior_probability))
        self.class_score = keras.layers.Dense(
            self.num_outputs, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            bias_initializer=class_bias, dtype=policy, name="cls_score")
        self.box_pred = keras.layers.Dense(
            4 * self.num_outputs, kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
            dtype=policy, name="bbox_pred")

    def build(self, input_shape):
        units = build_chain(self.hidden, check_roi_shape(input_shape))
        self.class_score.build((None, None, units))
        self.box_pred.build((None, None, units))

    def call(self, roi_features):
        x = run_hidden(self.hidden, flatten_rois(roi_features))
        return {"class_logits": self.class_score(x), "box_deltas": split_deltas(self.box_pred(x), self.num_outputs)}

    def compute_output_shape(self, input_shape):
        check_roi_shape(input_shape)
        batch, rois = tuple(input_shape)[:2]
        return {"class_logits": (batch, rois, self.num_outputs), "box_deltas": (batch, rois, self.num_outputs, 4)}

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, classification_loss=self.classification_loss,
                      hidden_units=self.hidden_units, num_hidden=self.num_hidden,
                      prior_probability=self.prior_probability)
        return config
