"""FCOS locations: the points every level of an anchor-free detector predicts at.

Paper: "FCOS: Fully Convolutional One-Stage Object Detection", Z. Tian, C. Shen, H. Chen,
T. He, ICCV 2019, arXiv 1904.01355 (Sec. 3.1: a location ``(i, j)`` of a level of stride
``s`` maps to ``(floor(s / 2) + j s, floor(s / 2) + i s)`` in the image), as used by CondInst
("Conditional Convolutions for Instance Segmentation", arXiv 2003.05664). Built on
``keras_cvx.ops.anchors.fcos_locations``.
"""

import keras
import numpy as np
from keras import ops

from keras_cvx.ops.anchors import fcos_locations
from keras_cvx.validation import require_positive_int


@keras.saving.register_keras_serializable(package="keras_cvx")
class FCOSLocations:
    """The FCOS points of all pyramid levels, in level, row, column order.

    Args:
        strides: stride of each level (default ``(8, 16, 32, 64, 128)``: P3..P7).

    Call: ``FCOSLocations()(image_size, feature_sizes=None)`` with ``image_size`` ``(H, W)``
    (or an int) and ``feature_sizes`` the ``(h, w)`` of each level (default
    ``ceil(H / s) x ceil(W / s)``) -> ``(locations, levels)``: float32 NumPy ``[N, 2]`` of
    ``(x, y)`` pixels and int32 NumPy ``[N]`` level indices ``0..L-1``.

    Example:

    >>> from keras_cvx.models import FCOSLocations
    >>> locations, levels = FCOSLocations()((64, 64))
    >>> locations.shape, locations[0].tolist(), int(levels[-1])
    ((86, 2), [4.0, 4.0], 4)
    """

    def __init__(self, strides=(8, 16, 32, 64, 128)):
        strides = tuple(strides)
        if not strides:
            raise ValueError("`strides` must hold at least one stride.")
        self.strides = tuple(require_positive_int("strides", int(s) if isinstance(s, np.integer) else s)
                             for s in strides)

    @property
    def num_levels(self):
        return len(self.strides)

    def __call__(self, image_size, feature_sizes=None):
        locations, levels = fcos_locations(image_size, self.strides, feature_sizes)
        return (np.asarray(ops.convert_to_numpy(locations), np.float32),
                np.asarray(ops.convert_to_numpy(levels), np.int32))

    def get_config(self):
        return {"strides": list(self.strides)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
