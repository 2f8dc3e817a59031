"""Label encoders: ground truth -> per-anchor/per-location training targets."""

from keras_cvx.models.label_encoders.fcos import FCOSLabelEncoder, mask_centers
from keras_cvx.models.label_encoders.ssd import SSDLabelEncoder
