"""Models: backbones, classifiers and detectors."""

from keras_cvx.models.backbones import VGG16SSD, Backbone, FeatureExtractor, MobileNetV2, ResNet
from keras_cvx.models.complexity import count_macs, count_parameters
from keras_cvx.models.digit_convnet import digit_convnet
from keras_cvx.models.ssd_net import SSDNet
from keras_cvx.models.anchor_generators import FCOSLocations, FPNAnchorGenerator
from keras_cvx.models.condinst import CondInst
from keras_cvx.models.faster_rcnn import FasterRCNN
from keras_cvx.models.label_encoders import FCOSLabelEncoder, RetinaNetLabelEncoder, RoISampler, RPNLabelEncoder
from keras_cvx.models.necks import FeaturePyramid
from keras_cvx.models.pointins import PointINS
