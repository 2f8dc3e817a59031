"""Detection heads."""

from keras_cvx.heads.ssd import SSDHead
from keras_cvx.heads.condinst import CondInstController, CondInstMaskBranch, CondInstSemanticHead
from keras_cvx.heads.fcos import FCOSHead
from keras_cvx.heads.rpn import RPNHead
from keras_cvx.heads.roi_box import SiblingBoxHead
from keras_cvx.heads.tsd import TSDHead, shift_proposals
from keras_cvx.heads.pointins import PointINSMaskHead
from keras_cvx.heads.retinanet import RetinaNetHead
