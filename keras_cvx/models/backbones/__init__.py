"""Backbones: Functional models returning a dict of feature maps for the detectors, saved as
their constructor arguments (``Backbone``)."""

from keras_cvx.models.backbones.backbone import Backbone
from keras_cvx.models.backbones.keras_applications import FeatureExtractor, default_feature_layers
from keras_cvx.models.backbones.mobilenet_v2 import MobileNetV2
from keras_cvx.models.backbones.resnet import ResNet
from keras_cvx.models.backbones.vgg import VGG16SSD
