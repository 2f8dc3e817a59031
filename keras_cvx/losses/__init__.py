"""Losses: computed in float32 under every dtype policy."""

from keras_cvx.losses.circle import CircleLoss, PairwiseCircleLoss
from keras_cvx.losses.distillation import TopKDistillation
from keras_cvx.losses.equalization import EqualizationLoss, SoftmaxEqualizationLoss, tail_class_mask
from keras_cvx.losses.equalization_v2 import EqualizationLossV2
from keras_cvx.losses.multibox import MultiBoxLoss
from keras_cvx.losses.dice import DiceLoss
from keras_cvx.losses.focal import SigmoidFocalLoss
from keras_cvx.losses.iou import IoULoss
from keras_cvx.losses.replicas import normalized_sum, replica_share
from keras_cvx.losses.progressive_constraint import (
    classification_progressive_constraint,
    localization_progressive_constraint,
    progressive_constraint,
    true_class_probability,
)
