"""SSD anchors ("default boxes" or "priors" in the SSD paper) for any pyramid.

Paper: "SSD: Single Shot MultiBox Detector", W. Liu et al., ECCV 2016, arXiv 1512.02325
(Sec. 2.2 "Choosing scales and aspect ratios for default boxes", eq. 4), the anchors of
NETNet ("Neighbor Erasing and Transferring Network for Better Single Shot Object Detection",
Y. Li et al., CVPR 2020, arXiv 2001.06690). Built on ``keras_cvx.ops.anchors.ssd_anchors``.

Settings: SSD300's and SSD512's COCO settings (``keras_cvx.ops.anchors.SSD_CONFIGS``) when
the image and feature sizes are theirs; otherwise, for small models, the SSD paper's rule
(eq. 4 with a VOC-style first level): for L levels, scales s_1 = 0.1,
s_k = 0.2 + 0.7 (k − 2) / (L − 2) for k = 2..L, s_{L+1} = s_L + 0.7 / (L − 2) (L ≥ 3; with
L ≤ 2 the scales are 0.2 and 0.9 spread evenly), min size s_k S, max size s_{k+1} S, step
S / f_k, aspect ratios (2,) on the first and the last two levels and (2, 3) elsewhere. Any
setting given to the constructor replaces the derived one.
"""

import keras
import numpy as np
from keras import ops

from keras_cvx.ops.anchors import CLIP_MODES, SSD_CONFIGS, ssd_anchors

SETTINGS = ("steps", "min_sizes", "max_sizes", "aspect_ratios")


def derived_settings(image_size, feature_sizes):
    """The SSD paper's rule for feature sizes without a built-in setting (module docstring)."""
    levels = len(feature_sizes)
    if levels >= 3:
        scales = [0.1] + [0.2 + 0.7 * (k - 2) / (levels - 2) for k in range(2, levels + 1)]
        scales.append(scales[-1] + 0.7 / (levels - 2))
    else:
        scales = list(np.linspace(0.2, 0.9, levels + 1))
    return dict(
        steps=tuple(image_size / f for f in feature_sizes),
        min_sizes=tuple(s * image_size for s in scales[:-1]),
        max_sizes=tuple(s * image_size for s in scales[1:]),
        aspect_ratios=tuple((2,) if k == 0 or k >= levels - 2 else (2, 3) for k in range(levels)),
    )


@keras.saving.register_keras_serializable(package="keras_cvx")
class SSDAnchorGenerator:
    """SSD anchors of a square image for the given pyramid (see the module docstring).

    Args:
        steps, min_sizes, max_sizes, aspect_ratios: per-level SSD settings (pixels); ``None``
            takes SSD300/512's COCO setting or the SSD paper's rule.
        clip: ``False`` (Caffe SSD), ``True``/``"corners"`` or ``"center_size"`` (the PyTorch
            ports); see ``keras_cvx.ops.anchors.ssd_anchors``.

    Call: ``generator(image_size, feature_sizes)`` -> float32 NumPy ``[N, 4]`` ``xyxy`` pixels
    in level, row, column, box order. ``anchors_per_location(image_size, feature_sizes)`` gives
    the boxes per cell of each level (``2 + 2 len(aspect_ratios)``).

    Example:

    >>> from keras_cvx.models.anchor_generators import SSDAnchorGenerator
    >>> generator = SSDAnchorGenerator()
    >>> generator(300, (38, 19, 10, 5, 3, 1)).shape
    (8732, 4)
    >>> generator.anchors_per_location(300, (38, 19, 10, 5, 3, 1))
    (4, 6, 6, 6, 4, 4)
    """

    def __init__(self, steps=None, min_sizes=None, max_sizes=None, aspect_ratios=None, clip=False):
        if clip not in CLIP_MODES:
            raise ValueError(f"`clip` must be one of {CLIP_MODES}, got {clip!r}.")
        self.clip = clip
        self.steps = None if steps is None else tuple(float(s) for s in steps)
        self.min_sizes = None if min_sizes is None else tuple(float(s) for s in min_sizes)
        self.max_sizes = None if max_sizes is None else tuple(float(s) for s in max_sizes)
        self.aspect_ratios = None if aspect_ratios is None else tuple(
            tuple(float(r) for r in ratios) for ratios in aspect_ratios)

    def settings(self, image_size, feature_sizes):
        """The per-level settings used for ``image_size`` and ``feature_sizes``."""
        feature_sizes = tuple(int(f) for f in feature_sizes)
        builtin = SSD_CONFIGS.get(int(image_size))
        if builtin is not None and tuple(builtin["feature_sizes"]) == feature_sizes:
            settings = {k: tuple(builtin[k]) for k in SETTINGS}
        else:
            settings = derived_settings(image_size, feature_sizes)
        settings.update({k: getattr(self, k) for k in SETTINGS if getattr(self, k) is not None})
        for key, values in settings.items():
            if len(values) != len(feature_sizes):
                raise ValueError(f"`{key}` needs one entry per level ({len(feature_sizes)}), got {values!r}.")
        return dict(settings, feature_sizes=feature_sizes)

    def anchors_per_location(self, image_size, feature_sizes):
        return tuple(2 + 2 * len(r) for r in self.settings(image_size, feature_sizes)["aspect_ratios"])

    def __call__(self, image_size, feature_sizes):
        anchors = ssd_anchors(int(image_size), clip=self.clip, **self.settings(image_size, feature_sizes))
        return np.asarray(ops.convert_to_numpy(anchors), np.float32)

    def get_config(self):
        return {
            "steps": None if self.steps is None else list(self.steps),
            "min_sizes": None if self.min_sizes is None else list(self.min_sizes),
            "max_sizes": None if self.max_sizes is None else list(self.max_sizes),
            "aspect_ratios": None if self.aspect_ratios is None else [list(r) for r in self.aspect_ratios],
            "clip": self.clip,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
