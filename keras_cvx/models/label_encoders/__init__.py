"""Label encoders: ground truth -> per-anchor/per-location/per-RoI training targets."""

from keras_cvx.models.label_encoders.fcos import FCOSLabelEncoder, mask_centers
from keras_cvx.models.label_encoders.roi import RoISampler
from keras_cvx.models.label_encoders.rpn import RPNLabelEncoder
from keras_cvx.models.label_encoders.ssd import SSDLabelEncoder
from keras_cvx.models.label_encoders.retinanet import RetinaNetLabelEncoder
