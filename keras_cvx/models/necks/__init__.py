"""Necks: feature pyramids between a backbone and the detection heads."""

from keras_cvx.models.necks.fpn import FeaturePyramid
