"""Feature Pyramid Network neck: backbone maps ``{"C2".."C5"}`` -> pyramid ``{"P2".."P7"}``.

Paper: "Feature Pyramid Networks for Object Detection", T.-Y. Lin, P. Dollár, R. Girshick,
K. He, B. Hariharan, S. Belongie, CVPR 2017, arXiv 1612.03144 (Sec. 3, Fig. 3). The two
ways of adding coarser levels follow the detectors that use them:

* ``extra_levels="max_pool"`` -- Faster R-CNN + FPN (arXiv 1612.03144 Sec. 4.1; Detectron2
  ``LastLevelMaxPool``): ``P6 = max_pool(P5, kernel 1, stride 2)``, i.e. every other pixel of P5.
* ``extra_levels="conv"`` -- FCOS (arXiv 1904.01355) and CondInst (arXiv 2003.05664; AdelaiDet
  ``LastLevelP6P7`` with ``in_features="p5"``): ``P6 = Conv3x3/2(P5)``, ``P7 = Conv3x3/2(ReLU(P6))``
  (RetinaNet, arXiv 1708.02002, takes C5 instead of P5 -- not done here).

For the backbone levels ``l = min_level..5`` with ``C_l`` of stride ``2^l``::

    M_5 = Conv1x1(C_5)
    M_l = Conv1x1(C_l) + nearest_upsample_x2(M_{l+1})        (cropped to C_l's size)
    P_l = Conv3x3(M_l)                                        256 channels, 'same' padding, bias

Parameter counts at 256 channels on ResNet-50 (C2..C5 with 256, 512, 1024, 2048 channels):
P2-P6 with ``"max_pool"`` (Faster R-CNN): 3,344,384; P3-P7 with ``"conv"`` (FCOS/CondInst):
3,868,672.

Initialisation: Detectron2's ``c2_xavier_fill`` (Kaiming-uniform with ``a = 1``, i.e. uniform in
``±sqrt(3 / fan_in)``), which is Keras's ``"lecun_uniform"``; biases 0.

Differences from the reference implementation: Detectron2 requires the upsampled map and
the lateral to have the same size (inputs padded to a multiple of 32); here the upsampled
map is cropped to the lateral's size, so odd sizes (e.g. 25 -> 13 at 800 px) also work.
"""

import keras
from keras import ops

from keras_cvx.validation import require_choice, require_positive_int

EXTRA_LEVELS = ("conv", "max_pool")


def _upsample_to(x, height, width):
    """Nearest-neighbour x2 upsampling of ``x [B, h, w, C]``, cropped to ``height x width``."""
    x = ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2)
    return x[:, :height, :width, :]


@keras.saving.register_keras_serializable(package="keras_cvx")
class FeaturePyramid(keras.layers.Layer):
    """FPN neck from a dict of backbone maps ``C{min_level}..C5`` to ``P{min_level}..P{max_level}``.

    Paper: "Feature Pyramid Networks for Object Detection", arXiv 1612.03144, Sec. 3; P6/P7 as
    in FCOS (arXiv 1904.01355) and CondInst (arXiv 2003.05664). See the module docstring.

    Args:
        channels: width of every output level (256 in the papers).
        min_level: finest level (2 for Faster R-CNN, 3 for FCOS/CondInst); the input must
            hold ``C{min_level}`` .. ``C5``.
        max_level: coarsest level (6 for Faster R-CNN, 7 for FCOS/CondInst; >= 5).
        extra_levels: how levels above 5 are made: ``"conv"`` (default; 3x3 stride-2 convs,
            P6 on P5, P7 on ReLU(P6)) or ``"max_pool"`` (stride-2 sub-sampling of the previous
            level, kernel 1).
        kernel_initializer: of every conv (default ``"lecun_uniform"`` = ``c2_xavier_fill``).
        bias_initializer: of every conv (default ``"zeros"``).

    Call: ``fpn({"C3": [B, H3, W3, c3], "C4": ..., "C5": ...})`` (other keys are ignored) ->
    ``{"P3": [B, H3, W3, channels], ..., "P7": [B, ceil(H5 / 4), ceil(W5 / 4), channels]}``.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.models import FeaturePyramid
    >>> fpn = FeaturePyramid(channels=8, min_level=3, max_level=7)
    >>> maps = {f"C{l}": np.ones((1, 64 >> l, 64 >> l, 4), "float32") for l in (3, 4, 5)}
    >>> {k: tuple(v.shape) for k, v in fpn(maps).items()}["P7"]
    (1, 1, 1, 8)
    """

    def __init__(self, channels=256, min_level=3, max_level=7, extra_levels="conv",
                 kernel_initializer="lecun_uniform", bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.channels = require_positive_int("channels", channels)
        self.min_level = require_positive_int("min_level", min_level)
        self.max_level = require_positive_int("max_level", max_level)
        if not 2 <= self.min_level <= 5:
            raise ValueError(f"`min_level` must be in 2..5 (backbone levels C2..C5), got {min_level!r}.")
        if self.max_level < 5:
            raise ValueError(f"`max_level` must be >= 5, got {max_level!r}.")
        self.extra_levels = require_choice("extra_levels", extra_levels, EXTRA_LEVELS)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

        def conv(filters, kernel_size, name, **options):
            # a fresh initializer per layer: one instance reused gives every layer the same values
            return keras.layers.Conv2D(filters, kernel_size, name=name, dtype=self.dtype_policy,
                                       kernel_initializer=self.kernel_initializer.clone(),
                                       bias_initializer=self.bias_initializer.clone(), **options)

        self.backbone_levels = list(range(self.min_level, 6))
        self.extra = list(range(6, self.max_level + 1))
        # lists indexed like backbone_levels / extra (layers in lists save and load by position)
        self.lateral_convs = [conv(self.channels, 1, f"lateral{l}")
                              for l in self.backbone_levels]
        self.output_convs = [conv(self.channels, 3, f"output{l}", padding="same")
                             for l in self.backbone_levels]
        self.extra_convs = []
        if self.extra_levels == "conv":
            self.extra_convs = [conv(self.channels, 3, f"p{l}", strides=2, padding="same")
                                for l in self.extra]

    @property
    def input_keys(self):
        return [f"C{l}" for l in self.backbone_levels]

    @property
    def output_keys(self):
        return [f"P{l}" for l in range(self.min_level, self.max_level + 1)]

    def _check_input(self, input_shape):
        if not isinstance(input_shape, dict) or any(k not in input_shape for k in self.input_keys):
            raise ValueError(
                f"FeaturePyramid expects a dict with keys {self.input_keys} (backbone maps), got "
                f"{list(input_shape) if isinstance(input_shape, dict) else input_shape!r}."
            )

    def build(self, input_shape):
        self._check_input(input_shape)
        for l, lateral, output in zip(self.backbone_levels, self.lateral_convs, self.output_convs):
            shape = tuple(input_shape[f"C{l}"])
            lateral.build(shape)
            output.build(shape[:-1] + (self.channels,))
        previous = tuple(input_shape["C5"])[:-1] + (self.channels,)
        for conv in self.extra_convs:
            conv.build(previous)
            previous = conv.compute_output_shape(previous)

    def call(self, inputs):
        levels = self.backbone_levels
        merged = {5: self.lateral_convs[-1](inputs["C5"])}
        for i in reversed(range(len(levels) - 1)):
            lateral = self.lateral_convs[i](inputs[f"C{levels[i]}"])
            merged[levels[i]] = lateral + _upsample_to(merged[levels[i] + 1], lateral.shape[1], lateral.shape[2])
        outputs = {f"P{l}": conv(merged[l]) for l, conv in zip(levels, self.output_convs)}
        previous = outputs["P5"]
        for i, l in enumerate(self.extra):
            if self.extra_levels == "conv":
                previous = self.extra_convs[i](previous if l == 6 else ops.relu(previous))
            else:
                previous = previous[:, ::2, ::2, :]
            outputs[f"P{l}"] = previous
        return outputs

    def compute_output_shape(self, input_shape):
        self._check_input(input_shape)
        shapes = {f"P{l}": tuple(input_shape[f"C{l}"])[:-1] + (self.channels,) for l in self.backbone_levels}
        batch, height, width, _ = shapes["P5"]
        for l in self.extra:
            height = None if height is None else (height + 1) // 2
            width = None if width is None else (width + 1) // 2
            shapes[f"P{l}"] = (batch, height, width, self.channels)
        return shapes

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            min_level=self.min_level,
            max_level=self.max_level,
            extra_levels=self.extra_levels,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
        )
        return config
