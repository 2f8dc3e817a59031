"""Layers: one block per file."""

from keras_cvx.layers.channel_equilibrium import ChannelEquilibrium
from keras_cvx.layers.cosine_dense import CosineDense
from keras_cvx.layers.deformable_roi_pool import DeformableRoIPool
from keras_cvx.layers.dynamic_relu import DynamicReLU
from keras_cvx.layers.l2_normalization import L2Normalization
from keras_cvx.layers.neighbor_erasing import NeighborErasing
from keras_cvx.layers.neighbor_transferring import NeighborTransferring
from keras_cvx.layers.nn_fusion import NearestNeighborFusion
from keras_cvx.layers.rezero import ReZero, ReZeroTransformerEncoder
from keras_cvx.layers.slim_conv import SlimConv2D
from keras_cvx.layers.squeeze_excite import SqueezeExcite
from keras_cvx.layers.ssd_decoder import SSDDecoder
from keras_cvx.layers.tau_normalized_dense import (
    LearnableWeightScaling,
    TauNormalizedDense,
    tau_normalized_from_dense,
)
from keras_cvx.layers.dynamic_mask_head import DynamicMaskHead
from keras_cvx.layers.fcos_decoder import FCOSDecoder
from keras_cvx.layers.proposal_generator import ProposalGenerator
from keras_cvx.layers.rcnn_decoder import RCNNDecoder
from keras_cvx.layers.instance_aware_conv import InstanceAwareConv
from keras_cvx.layers.retinanet_decoder import RetinaNetDecoder
