"""Region Proposal Network head, shared over the levels of a feature pyramid.

Paper: "Faster R-CNN: Towards Real-Time Object Detection with Region Proposal Networks",
S. Ren, K. He, R. Girshick, J. Sun, arXiv 1506.01497 (Sec. 3.1); shared over the FPN levels as
in "Feature Pyramid Networks for Object Detection", arXiv 1612.03144 (Sec. 4.1). For every
level map ``P_l``::

    t = ReLU(Conv3x3(P_l))                  ``channels`` filters (256), weights shared by the levels
    objectness = Conv1x1(t)                 A logits per location (sigmoid classifier)
    deltas     = Conv1x1(t)                 4 A box deltas per location

Initialisation: every conv N(0, 0.01), bias 0 (the reference code's ``normal_init(std=0.01)``).
At 256 channels and A = 3 anchors per location: 593,935 parameters.

Outputs are flattened in the order level, row, column, anchor: the order of
``keras_cvx.models.anchor_generators.FPNAnchorGenerator`` (level, row, column, ratio, scale).
"""

import keras
from keras import ops

from keras_cvx.heads.fcos import check_levels, flatten_levels
from keras_cvx.validation import require_positive_int


def _conv(filters, kernel_size, name, policy, **options):
    return keras.layers.Conv2D(filters, kernel_size, name=name, dtype=policy,
                               kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                               bias_initializer="zeros", **options)


@keras.saving.register_keras_serializable(package="keras_cvx")
class RPNHead(keras.layers.Layer):
    """RPN head shared over pyramid levels (see the module docstring).

    Paper: "Faster R-CNN", arXiv 1506.01497, Sec. 3.1; FPN, arXiv 1612.03144, Sec. 4.1.

    Args:
        anchors_per_location: ``A`` (default 3: three aspect ratios).
        num_levels: number of pyramid maps the head is called on (default 5: P2..P6).
        channels: filters of the shared 3x3 conv (default 256).

    Call: ``head([P_1, ..., P_L])`` with maps ``[B, H_l, W_l, C]`` ->
    ``{"objectness_logits": [B, N], "anchor_deltas": [B, N, 4]}`` with
    ``N = Σ_l H_l W_l A``, in the features' compute dtype.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.heads import RPNHead
    >>> head = RPNHead(num_levels=2, channels=8)
    >>> out = head([np.zeros((1, 4, 4, 8), "float32"), np.zeros((1, 2, 2, 8), "float32")])
    >>> tuple(out["objectness_logits"].shape), tuple(out["anchor_deltas"].shape)
    ((1, 60), (1, 60, 4))
    """

    _call_takes_sequence = True  # one list of maps, not one argument per map (tests/test_case.py)

    def __init__(self, anchors_per_location=3, num_levels=5, channels=256, **kwargs):
        super().__init__(**kwargs)
        self.anchors_per_location = require_positive_int("anchors_per_location", anchors_per_location)
        self.num_levels = require_positive_int("num_levels", num_levels)
        self.channels = require_positive_int("channels", channels)
        policy = self.dtype_policy
        self.conv = _conv(self.channels, 3, "conv", policy, padding="same")
        self.objectness = _conv(self.anchors_per_location, 1, "objectness", policy)
        self.deltas = _conv(4 * self.anchors_per_location, 1, "deltas", policy)

    def build(self, input_shape):
        check_levels(input_shape, self.num_levels)
        shape = tuple(input_shape[0])
        self.conv.build(shape)
        hidden = shape[:-1] + (self.channels,)
        self.objectness.build(hidden)
        self.deltas.build(hidden)

    def call(self, features):
        hidden = [ops.relu(self.conv(level)) for level in features]
        a = self.anchors_per_location
        logits = flatten_levels([self.objectness(t) for t in hidden], a)
        deltas = flatten_levels([self.deltas(t) for t in hidden], 4 * a)
        return {"objectness_logits": ops.reshape(logits, (-1, logits.shape[1] * a)),
                "anchor_deltas": ops.reshape(deltas, (-1, deltas.shape[1] * a, 4))}

    def compute_output_shape(self, input_shape):
        n = sum(s[1] * s[2] * self.anchors_per_location for s in input_shape)
        return {"objectness_logits": (input_shape[0][0], n), "anchor_deltas": (input_shape[0][0], n, 4)}

    def get_config(self):
        config = super().get_config()
        config.update(anchors_per_location=self.anchors_per_location, num_levels=self.num_levels,
                      channels=self.channels)
        return config
