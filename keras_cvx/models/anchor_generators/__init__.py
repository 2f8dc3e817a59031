"""Anchor generators: the anchors or locations a detector predicts at, as small serializable objects."""

from keras_cvx.models.anchor_generators.fcos import FCOSLocations
from keras_cvx.models.anchor_generators.fpn import FPNAnchorGenerator
from keras_cvx.models.anchor_generators.ssd import SSDAnchorGenerator
