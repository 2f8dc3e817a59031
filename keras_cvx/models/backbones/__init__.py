"""Backbones: Functional models returning a dict of feature maps for the detectors."""

from keras_cvx.models.backbones.keras_applications import default_feature_layers, feature_extractor
from keras_cvx.models.backbones.mobilenet_v2 import MobileNetV2
from keras_cvx.models.backbones.resnet import ResNet
from keras_cvx.models.backbones.vgg import VGG16SSD
