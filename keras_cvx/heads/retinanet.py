"""RetinaNet detection head: class and box subnets shared over the pyramid levels.

Paper: "Focal Loss for Dense Object Detection", T.-Y. Lin, P. Goyal, R. Girshick, K. He,
P. Dollár, ICCV 2017, arXiv 1708.02002 (Sec. 4 "Classification Subnet" and "Box Regression
Subnet", Fig. 3; Sec. 4.1 "Initialization"; Sec. 3.3 the prior π). For each level map ``P_l``
(weights shared by every level)::

    T_cls = [Conv3x3_C -> ReLU] x num_convs (P_l)                  C = ``channels``
    T_box = [Conv3x3_C -> ReLU] x num_convs (P_l)                  own weights
    class_logits   = Conv3x3_{C -> K A}(T_cls)        bias -log((1 - π) / π) = -4.595 for π = 0.01
    box_regression = Conv3x3_{C -> 4 A}(T_box)        Faster R-CNN deltas (t_x, t_y, t_w, t_h)

Initialisation: every conv N(0, 0.01), bias 0, except the class prior. No normalisation
(Detectron2's default ``norm=""``). ``K`` object classes, sigmoid per class, no background
column.

Output order: level, row, column, anchor; the output channel ``a K + k`` of a location is
anchor ``a``, class ``k`` (box channel ``4 a + j``), as Detectron2's ``permute_to_N_HWA_K``. With
``FPNAnchorGenerator`` (order level, row, column, ratio, scale) anchor ``a`` of a location is
``ratio_index · len(scales) + scale_index``: row ``n`` of the outputs belongs to anchor ``n`` of
the generator.

Parameters with 256 channels, 80 classes and A = 9: 6,463,220 (two subnets 4,720,640,
class predictor 1,659,600, box predictor 82,980).
"""

import math

import keras
from keras import ops

from keras_cvx.heads.fcos import _conv, check_levels, flatten_levels
from keras_cvx.validation import require_positive_int, require_unit_interval


def _check_pyramid(input_shape, name="features"):
    """ValueError unless ``input_shape`` is a non-empty list of static NHWC shapes with one
    channel count; returns that channel count."""
    if (not isinstance(input_shape, (list, tuple)) or not input_shape
            or not all(isinstance(s, (list, tuple)) for s in input_shape)):
        raise ValueError(f"`{name}` must be a non-empty list of maps (one per level), got {input_shape}.")
    check_levels(input_shape, len(input_shape), name)
    channels = {int(s[-1]) for s in input_shape}
    if len(channels) != 1:
        raise ValueError(f"every map of `{name}` must have the same channels, got {sorted(channels)}.")
    return channels.pop()


@keras.saving.register_keras_serializable(package="keras_cvx")
class RetinaNetHead(keras.layers.Layer):
    """RetinaNet class and box subnets over a list of pyramid levels (see the module docstring).

    Paper: "Focal Loss for Dense Object Detection", T.-Y. Lin et al.,
    https://arxiv.org/abs/1708.02002, Sec. 4 (the subnets of Fig. 3) and Sec. 4.1
    (initialisation with the prior π, Sec. 3.3).

    Args:
        num_classes: object classes ``K`` (no background column).
        num_anchors: anchors per location ``A`` (default 9: 3 aspect ratios x 3 scales).
        num_convs: conv + ReLU blocks per subnet (default 4).
        channels: filters of the subnet convs (default ``None``: the input channels).
        prior_probability: π of the class bias initialisation (default 0.01).
        return_box_features: also return the box subnet's last hidden maps (after the last
            ReLU, before the ``4 A`` predictor; the maps themselves when ``num_convs = 0``):
            PointINS (arXiv 2003.06148) computes its mask template and instance-aware weights
            from them. Default False.

    Call: ``head([P3, ..., P7])`` (NHWC maps with the same channels, static sizes; any number
    of levels) -> ``{"class_logits": [B, N, K], "box_regression": [B, N, 4]}`` with
    ``N = Σ_l H_l W_l A`` in the order level, row, column, anchor (and ``"box_features"``: the
    list of ``[B, H_l, W_l, C]`` box subnet maps when ``return_box_features``), in the compute
    dtype.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.heads.retinanet import RetinaNetHead
    >>> head = RetinaNetHead(num_classes=3, num_anchors=2, num_convs=1)
    >>> out = head([np.ones((1, 4, 4, 8), "float32"), np.ones((1, 2, 2, 8), "float32")])
    >>> tuple(out["class_logits"].shape), tuple(out["box_regression"].shape)   # (16 + 4) x 2 anchors
    ((1, 40, 3), (1, 40, 4))
    >>> round(float(1 / (1 + np.exp(-np.asarray(out["class_logits"])[0, 0, 0]))), 3)   # ≈ π
    0.01

    Differences from the reference implementation: none in the computation; Detectron2's
    ``RetinaNetHead`` returns per-level NCHW maps that ``permute_to_N_HWA_K`` flattens, here the
    levels are flattened and concatenated in the same order.
    """

    _call_takes_sequence = True  # one list of maps, not one argument per map (tests/test_case.py)

    def __init__(self, num_classes, num_anchors=9, num_convs=4, channels=None, prior_probability=0.01,
                 return_box_features=False, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = require_positive_int("num_classes", num_classes)
        self.num_anchors = require_positive_int("num_anchors", num_anchors)
        if isinstance(num_convs, bool) or not isinstance(num_convs, int) or num_convs < 0:
            raise ValueError(f"`num_convs` must be a non-negative integer, got {num_convs!r}.")
        self.num_convs = num_convs
        self.channels = None if channels is None else require_positive_int("channels", channels)
        self.prior_probability = require_unit_interval("prior_probability", prior_probability)
        if not self.prior_probability > 0:
            raise ValueError(f"`prior_probability` must be in (0, 1), got {prior_probability!r}.")
        self.return_box_features = bool(return_box_features)
        policy = self.dtype_policy
        self.class_subnet, self.box_subnet = [], []  # made in build(): the width may be the input channels
        bias = -math.log((1.0 - self.prior_probability) / self.prior_probability)
        self.class_conv = _conv(self.num_classes * self.num_anchors, "cls_score", policy,
                                keras.initializers.Constant(bias))
        self.box_conv = _conv(4 * self.num_anchors, "bbox_pred", policy)

    def _width(self, in_channels):
        if self.num_convs == 0:
            return in_channels
        return in_channels if self.channels is None else self.channels

    def build(self, input_shape):
        in_channels = _check_pyramid(input_shape)
        width = self._width(in_channels)
        for subnet, prefix in ((self.class_subnet, "cls_subnet"), (self.box_subnet, "bbox_subnet")):
            for i in range(self.num_convs):
                conv = _conv(width, f"{prefix}_conv{i}", self.dtype_policy)
                conv.build((None, None, None, in_channels if i == 0 else width))
                subnet.append(conv)
        self.class_conv.build((None, None, None, width))
        self.box_conv.build((None, None, None, width))

    @staticmethod
    def _subnet(convs, x):
        for conv in convs:
            x = ops.relu(conv(x))
        return x

    def call(self, features):
        logits, deltas, box_features = [], [], []
        for x in features:
            box_feature = self._subnet(self.box_subnet, x)
            logits.append(self.class_conv(self._subnet(self.class_subnet, x)))
            deltas.append(self.box_conv(box_feature))
            box_features.append(box_feature)
        a, k = self.num_anchors, self.num_classes
        logits = flatten_levels(logits, a * k)  # [B, Σ H W, A K]: channel a K + k
        deltas = flatten_levels(deltas, a * 4)
        out = {"class_logits": ops.reshape(logits, (-1, logits.shape[1] * a, k)),
               "box_regression": ops.reshape(deltas, (-1, deltas.shape[1] * a, 4))}
        if self.return_box_features:
            out["box_features"] = box_features
        return out

    def compute_output_shape(self, input_shape):
        width = self._width(_check_pyramid(input_shape))
        batch = input_shape[0][0]
        count = sum(int(s[1]) * int(s[2]) for s in input_shape) * self.num_anchors
        out = {"class_logits": (batch, count, self.num_classes), "box_regression": (batch, count, 4)}
        if self.return_box_features:
            out["box_features"] = [tuple(s[:3]) + (width,) for s in input_shape]
        return out

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, num_anchors=self.num_anchors, num_convs=self.num_convs,
                      channels=self.channels, prior_probability=self.prior_probability,
                      return_box_features=self.return_box_features)
        return config
