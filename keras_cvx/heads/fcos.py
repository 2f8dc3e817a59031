"""FCOS detection head: shared classification and box towers over the pyramid levels.

Papers: "FCOS: Fully Convolutional One-Stage Object Detection", Z. Tian, C. Shen, H. Chen,
T. He, ICCV 2019, arXiv 1904.01355 (Sec. 3.1 Fig. 2, the head; Sec. 3.3 center-ness), with
the "improved FCOS" options of its later versions and of CondInst ("Conditional Convolutions
for Instance Segmentation", arXiv 2003.05664; AdelaiDet ``FCOSHead``): GroupNorm in the
towers, center-ness on the box tower, per-level learnable scales and ReLU box regression.

For each level ``l`` (weights shared across levels except the scale ``s_l``)::

    T_cls = [Conv3x3 -> GroupNorm(32) -> ReLU] x 4 (x)          T_box likewise, own weights
    class_logits      = Conv3x3_{C -> K}(T_cls)                  bias -log((1 - π) / π), π = 0.01
    box_regression    = ReLU(s_l · Conv3x3_{C -> 4}(T_box))      (l, t, r, b) in strides, s_l init 1
    centerness_logits = Conv3x3_{C -> 1}(T_box)

Outputs are flattened per level in row-major order and concatenated in level order (the
order of ``keras_cvx.models.anchor_generators.FCOSLocations``). ``K = num_classes`` object
classes: FCOS has no background column (sigmoid per class; a location is background when
every class is off). Initialisation: every conv N(0, 0.01), bias 0 (except the class prior);
GroupNorm γ = 1, β = 0, ε = 1e-5.

Parameters with 256 channels, 80 classes and 5 levels: 4,920,666 (two towers 4,724,736,
classes 184,400, box 9,220, center-ness 2,305, scales 5).
"""

import math

import keras
from keras import ops

from keras_cvx.validation import require_positive_int, require_unit_interval


def _conv(filters, name, policy, bias_initializer="zeros", use_bias=True):
    return keras.layers.Conv2D(filters, 3, padding="same", use_bias=use_bias,
                               kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                               bias_initializer=bias_initializer, dtype=policy, name=name)


def flatten_levels(maps, channels):
    """``[B, H_l, W_l, C]`` maps -> ``[B, Σ H_l W_l, C]`` (level, row, column order)."""
    return ops.concatenate([ops.reshape(m, (-1, m.shape[1] * m.shape[2], channels)) for m in maps], axis=1)


def check_levels(input_shape, num_levels, name="features"):
    """ValueError unless ``input_shape`` is a list of ``num_levels`` static NHWC shapes."""
    if not isinstance(input_shape, (list, tuple)) or len(input_shape) != num_levels:
        raise ValueError(f"`{name}` must be a list of {num_levels} maps (one per level), got {input_shape}.")
    for shape in input_shape:
        if len(shape) != 4 or None in tuple(shape)[1:]:
            raise ValueError(f"every map of `{name}` must be (B, H, W, C) with known H, W, C, got {shape}.")


@keras.saving.register_keras_serializable(package="keras_cvx")
class FCOSHead(keras.layers.Layer):
    """FCOS head over a list of pyramid levels (see the module docstring).

    Paper: "FCOS: Fully Convolutional One-Stage Object Detection", arXiv 1904.01355, Sec. 3
    (head of Fig. 2, center-ness eq. 3); improved-FCOS options as in CondInst, arXiv 2003.05664.

    Args:
        num_classes: object classes K (no background column).
        num_levels: pyramid levels the head is shared over (default 5, P3..P7); one
            learnable scale each.
        num_convs: conv + GroupNorm + ReLU blocks per tower (default 4).
        groups: GroupNorm groups (default 32; must divide the input channels).
        prior_probability: π of the class bias initialisation (default 0.01).
        return_box_features: also return the box tower outputs (CondInst's controller reads
            them); default False.

    Call: ``head([P3, ..., P7])`` (NHWC maps with the same channels, static sizes) ->
    ``{"class_logits": [B, N, K], "box_regression": [B, N, 4], "centerness_logits": [B, N]}``
    with ``N = Σ H_l W_l`` (and ``"box_features"``: the list of ``[B, H_l, W_l, C]`` box tower
    maps when ``return_box_features``).

    Example:

    >>> import numpy as np
    >>> from keras_cvx.heads import FCOSHead
    >>> head = FCOSHead(num_classes=3, num_levels=2, groups=4)
    >>> out = head([np.ones((1, 4, 4, 8), "float32"), np.ones((1, 2, 2, 8), "float32")])
    >>> tuple(out["class_logits"].shape), tuple(out["box_regression"].shape)
    ((1, 20, 3), (1, 20, 4))

    Differences from the reference implementation: none in the computation; AdelaiDet's
    ``FCOSHead`` returns per-level lists, here the levels are concatenated.
    """

    _call_takes_sequence = True

    def __init__(self, num_classes, num_levels=5, num_convs=4, groups=32, prior_probability=0.01,
                 return_box_features=False, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = require_positive_int("num_classes", num_classes)
        self.num_levels = require_positive_int("num_levels", num_levels)
        if isinstance(num_convs, bool) or not isinstance(num_convs, int) or num_convs < 0:
            raise ValueError(f"`num_convs` must be a non-negative integer, got {num_convs!r}.")
        self.num_convs = num_convs
        self.groups = require_positive_int("groups", groups)
        self.prior_probability = require_unit_interval("prior_probability", prior_probability)
        if not self.prior_probability > 0:
            raise ValueError(f"`prior_probability` must be in (0, 1), got {prior_probability!r}.")
        self.return_box_features = bool(return_box_features)
        policy = self.dtype_policy
        self.class_tower, self.box_tower = [], []  # tower convs are made in build(): width = input channels
        bias = -math.log((1.0 - self.prior_probability) / self.prior_probability)
        self.class_conv = _conv(self.num_classes, "cls_logits", policy, keras.initializers.Constant(bias))
        self.box_conv = _conv(4, "bbox_pred", policy)
        self.centerness_conv = _conv(1, "ctrness", policy)

    def build(self, input_shape):
        check_levels(input_shape, self.num_levels)
        channels = {int(s[-1]) for s in input_shape}
        if len(channels) != 1:
            raise ValueError(f"every level must have the same channels, got {sorted(channels)}.")
        channels = channels.pop()
        if channels % self.groups:
            raise ValueError(f"`groups` ({self.groups}) must divide the input channels ({channels}).")
        shape = (None, None, None, channels)
        for tower, prefix in ((self.class_tower, "cls_tower"), (self.box_tower, "bbox_tower")):
            for i in range(self.num_convs):
                tower.append(_conv(channels, f"{prefix}_conv{i}", self.dtype_policy))
                tower.append(keras.layers.GroupNormalization(self.groups, epsilon=1e-5, dtype=self.dtype_policy,
                                                             name=f"{prefix}_gn{i}"))
        for layer in self.class_tower + self.box_tower:
            layer.build(shape)
        for conv in (self.class_conv, self.box_conv, self.centerness_conv):
            conv.build(shape)
        self.scales = [self.add_weight(shape=(), initializer="ones", name=f"scale{l}")
                       for l in range(self.num_levels)]
        self.channels = channels

    @staticmethod
    def _tower(layers, x):
        for layer in layers:
            x = layer(x)
            if isinstance(layer, keras.layers.GroupNormalization):
                x = ops.relu(x)
        return x

    def call(self, features):
        logits, boxes, centerness, box_features = [], [], [], []
        for level, x in enumerate(features):
            cls_features = self._tower(self.class_tower, x)
            box_feature = self._tower(self.box_tower, x)
            logits.append(self.class_conv(cls_features))
            scale = ops.cast(self.scales[level], box_feature.dtype)
            boxes.append(ops.relu(scale * self.box_conv(box_feature)))
            centerness.append(self.centerness_conv(box_feature))
            box_features.append(box_feature)
        out = {
            "class_logits": flatten_levels(logits, self.num_classes),
            "box_regression": flatten_levels(boxes, 4),
            "centerness_logits": flatten_levels(centerness, 1)[..., 0],
        }
        if self.return_box_features:
            out["box_features"] = box_features
        return out

    def compute_output_shape(self, input_shape):
        check_levels(input_shape, self.num_levels)
        batch, count = input_shape[0][0], sum(s[1] * s[2] for s in input_shape)
        out = {"class_logits": (batch, count, self.num_classes), "box_regression": (batch, count, 4),
               "centerness_logits": (batch, count)}
        if self.return_box_features:
            out["box_features"] = [tuple(s) for s in input_shape]
        return out

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, num_levels=self.num_levels, num_convs=self.num_convs,
                      groups=self.groups, prior_probability=self.prior_probability,
                      return_box_features=self.return_box_features)
        return config
