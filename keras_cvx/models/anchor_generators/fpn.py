"""Feature-pyramid anchors for Faster R-CNN + FPN (and RetinaNet-style heads).

Paper: "Feature Pyramid Networks for Object Detection", T.-Y. Lin et al., CVPR 2017,
arXiv 1612.03144 (Sec. 4.1: one anchor size per level, 32..512 on P2..P6, aspect ratios
{1:2, 1:1, 2:1}); "Faster R-CNN", arXiv 1506.01497 (Sec. 3.1.1). Built on
``keras_cvx.ops.anchors.fpn_anchors``: ratio ``r = h / w``, ``w = size · scale / sqrt(r)``,
``h = size · scale · sqrt(r)``, centres ``(j + offset) · stride`` with ``offset = 0``
(Detectron2, mmdet v2). Order: level, row, column, ratio, scale.
"""

import keras
import numpy as np
from keras import ops

from keras_cvx.ops.anchors import fpn_anchors
from keras_cvx.validation import require_positive, require_positive_int


@keras.saving.register_keras_serializable(package="keras_cvx")
class FPNAnchorGenerator:
    """Anchors of every pyramid level (see the module docstring).

    Args:
        strides: stride of each level (default ``(4, 8, 16, 32, 64)``: P2..P6).
        sizes: anchor size of each level in pixels (default ``(32, 64, 128, 256, 512)``).
        aspect_ratios: ``h / w`` ratios (default ``(0.5, 1.0, 2.0)``).
        scales: size multipliers per location (default ``(1.0,)``; RetinaNet uses
            ``(2^0, 2^(1/3), 2^(2/3))``).
        offset: centre offset in strides (0).

    Call: ``generator(image_size, feature_sizes=None)`` -> float32 NumPy ``[N, 4]`` ``xyxy``
    pixels; ``feature_sizes`` the ``(h, w)`` of each level (default ``ceil(H / s) × ceil(W / s)``).
    ``anchors_per_location`` = ``len(aspect_ratios) · len(scales)``.

    Example:

    >>> from keras_cvx.models.anchor_generators import FPNAnchorGenerator
    >>> FPNAnchorGenerator()((64, 64)).shape
    (1023, 4)
    """

    def __init__(self, strides=(4, 8, 16, 32, 64), sizes=(32, 64, 128, 256, 512), aspect_ratios=(0.5, 1.0, 2.0),
                 scales=(1.0,), offset=0.0):
        self.strides = tuple(require_positive_int("strides", int(s)) for s in strides)
        self.sizes = tuple(require_positive("sizes", float(s)) for s in sizes)
        if len(self.sizes) != len(self.strides):
            raise ValueError(f"`sizes` needs one entry per stride {self.strides}, got {sizes!r}.")
        self.aspect_ratios = tuple(require_positive("aspect_ratios", float(r)) for r in aspect_ratios)
        self.scales = tuple(require_positive("scales", float(s)) for s in scales)
        self.offset = float(offset)

    @property
    def anchors_per_location(self):
        return len(self.aspect_ratios) * len(self.scales)

    def __call__(self, image_size, feature_sizes=None):
        anchors = fpn_anchors(image_size, self.strides, self.sizes, self.aspect_ratios, self.scales, self.offset,
                              feature_sizes)
        return np.asarray(ops.convert_to_numpy(anchors), np.float32)

    def get_config(self):
        return {"strides": list(self.strides), "sizes": list(self.sizes), "aspect_ratios": list(self.aspect_ratios),
                "scales": list(self.scales), "offset": self.offset}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
