"""Backbones: Functional models returning a dict of feature maps for the detectors."""

from keras_cvx.models.backbones.vgg import VGG16SSD
