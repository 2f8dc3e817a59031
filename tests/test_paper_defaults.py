"""Every default that a paper (or its official code) fixes, pinned as a literal written here
from the paper, not read back from the object under test: a changed default fails here even
where a test's reference formulation reads the value from the object."""

import keras
import pytest

from keras_cvx.heads.pointins import PointINSMaskHead
from keras_cvx.heads.retinanet import RetinaNetHead
from keras_cvx.heads.ssd import SSDHead
from keras_cvx.layers.channel_equilibrium import ChannelEquilibrium
from keras_cvx.layers.dynamic_relu import DynamicReLU
from keras_cvx.layers.instance_aware_conv import InstanceAwareConv
from keras_cvx.layers.l2_normalization import L2Normalization
from keras_cvx.layers.retinanet_decoder import RetinaNetDecoder
from keras_cvx.layers.rezero import ReZero
from keras_cvx.layers.slim_conv import SlimConv2D
from keras_cvx.layers.ssd_decoder import SSDDecoder
from keras_cvx.layers.squeeze_excite import SqueezeExcite
from keras_cvx.losses.circle import CircleLoss, PairwiseCircleLoss
from keras_cvx.losses.distillation import TopKDistillation
from keras_cvx.losses.equalization import EqualizationLoss
from keras_cvx.losses.equalization_v2 import EqualizationLossV2
from keras_cvx.losses.focal import SigmoidFocalLoss
from keras_cvx.losses.multibox import MultiBoxLoss
from keras_cvx.models.label_encoders.fcos import FCOSLabelEncoder
from keras_cvx.models.label_encoders.retinanet import RetinaNetLabelEncoder
from keras_cvx.models.label_encoders.ssd import SSDLabelEncoder
from keras_cvx.ops.boxes import BOX_CODER_WEIGHTS

# (object built with its defaults, attribute, value, source)
PAPER_DEFAULTS = [
    # Dynamic ReLU (arXiv 2003.10027, Sec. 3 and eq. 4): K = 2, λ_a = 1.0, λ_b = 0.5,
    # α¹ = 1, α² = β¹ = β² = 0 (ReLU at init), R = 4; DY-ReLU-C's softmax temperature τ = 10.
    (lambda: DynamicReLU(), "k", 2, "DY-ReLU K"),
    (lambda: DynamicReLU(), "lambda_a", 1.0, "DY-ReLU λ_a"),
    (lambda: DynamicReLU(), "lambda_b", 0.5, "DY-ReLU λ_b"),
    (lambda: DynamicReLU(), "init_a", (1.0, 0.0), "DY-ReLU α init"),
    (lambda: DynamicReLU(), "init_b", (0.0, 0.0), "DY-ReLU β init"),
    (lambda: DynamicReLU(), "reduction", 4, "DY-ReLU R"),
    (lambda: DynamicReLU(variant="C"), "temperature", 10.0, "DY-ReLU-C τ"),
    # Circle Loss (arXiv 2002.10857, Sec. 4.1 face recognition: m = 0.25, γ = 256; the
    # pair-wise defaults of the reference library implementations: m = 0.4, γ = 80)
    (lambda: CircleLoss(), "margin", 0.25, "Circle class-level m"),
    (lambda: CircleLoss(), "gamma", 256.0, "Circle class-level γ"),
    (lambda: PairwiseCircleLoss(), "margin", 0.4, "Circle pair-wise m"),
    (lambda: PairwiseCircleLoss(), "gamma", 80.0, "Circle pair-wise γ"),
    # Equalization Loss (arXiv 2003.05176, Sec. 4.2; official code λ = 0.00177, LVIS v0.5)
    (lambda: EqualizationLoss(class_frequencies=[0.5, 0.001]), "frequency_threshold", 0.00177, "EQL λ"),
    # EQL v2 (arXiv 2012.08548, Sec. 4.1): γ = 12, μ = 0.8, α = 4
    (lambda: EqualizationLossV2(3), "gamma", 12.0, "EQL v2 γ"),
    (lambda: EqualizationLossV2(3), "mu", 0.8, "EQL v2 μ"),
    (lambda: EqualizationLossV2(3), "alpha", 4.0, "EQL v2 α"),
    # KD for AutoAugment (arXiv 2003.11342, Sec. 4): the teacher's top-5 classes
    (lambda: TopKDistillation(), "k", 5, "KD top-K"),
    # SSD (arXiv 1512.02325, Sec. 2.2-2.3): matching IoU 0.5, 3:1 hard negatives, α = 1;
    # variances 0.1 / 0.2; test time: NMS 0.45, score 0.01, top 400 per class (Caffe SSD)
    (lambda: SSDLabelEncoder(), "iou_threshold", 0.5, "SSD matching threshold"),
    (lambda: SSDLabelEncoder(), "box_coder_weights", (10.0, 10.0, 5.0, 5.0), "SSD variances 0.1/0.2"),
    (lambda: MultiBoxLoss(), "negative_positive_ratio", 3.0, "SSD hard negatives 3:1"),
    (lambda: MultiBoxLoss(), "localization_weight", 1.0, "SSD α"),
    (lambda: SSDDecoder(), "iou_threshold", 0.45, "SSD NMS threshold"),
    (lambda: SSDDecoder(), "score_threshold", 0.01, "SSD score threshold"),
    (lambda: SSDDecoder(), "pre_nms_top_k", 400, "SSD per-class top-k"),
    (lambda: SSDHead(20), "kernel_size", 3, "SSD 3×3 predictors"),
    (lambda: L2Normalization(), "scale_init", 20.0, "ParseNet / SSD conv4_3 scale 20"),
    # Squeeze-and-Excitation (arXiv 1709.01507, Sec. 6.1): r = 16
    (lambda: SqueezeExcite(), "reduction", 16, "SE r"),
    # Channel Equilibrium (arXiv 2003.00214, Sec. 4): group size 16, 3 Newton-Schulz
    # iterations, momentum 0.1, reduction 4 in the IR branch
    (lambda: ChannelEquilibrium(), "group_size", 16, "CE group size"),
    (lambda: ChannelEquilibrium(), "iterations", 3, "CE Newton-Schulz T"),
    (lambda: ChannelEquilibrium(), "momentum", 0.1, "CE momentum"),
    (lambda: ChannelEquilibrium(), "reduction", 4, "CE IR reduction"),
    # Focal loss (arXiv 1708.02002, Sec. 5.1), used by FCOS/CondInst: α = 0.25, γ = 2
    (lambda: SigmoidFocalLoss(), "alpha", 0.25, "focal α"),
    (lambda: SigmoidFocalLoss(), "gamma", 2.0, "focal γ"),
    # FCOS (arXiv 2006.09214 "improved FCOS" / AdelaiDet): centre sampling radius 1.5, sizes of
    # interest 64, 128, 256, 512 on strides 8-128
    (lambda: FCOSLabelEncoder(), "center_sampling_radius", 1.5, "FCOS centre sampling radius"),
    (lambda: FCOSLabelEncoder(), "sizes_of_interest", (64.0, 128.0, 256.0, 512.0), "FCOS sizes of interest"),
    (lambda: FCOSLabelEncoder(), "strides", (8, 16, 32, 64, 128), "FCOS strides"),
    # SlimConv (arXiv 2003.07469, Sec. 3.2 and the official module): SE reduction r = 32
    (lambda: SlimConv2D(), "reduction", 32, "SlimConv r"),
    # RetinaNet (arXiv 1708.02002, Sec. 4 and 4.1): IoU >= 0.5 positive, < 0.4 background; prior
    # π = 0.01; inference: score > 0.05, top 1000 per level, NMS 0.5, 100 detections
    (lambda: RetinaNetLabelEncoder(), "positive_threshold", 0.5, "RetinaNet positive IoU"),
    (lambda: RetinaNetLabelEncoder(), "negative_threshold", 0.4, "RetinaNet background IoU"),
    (lambda: RetinaNetHead(80), "prior_probability", 0.01, "RetinaNet prior π"),
    (lambda: RetinaNetHead(80), "num_anchors", 9, "RetinaNet A"),
    (lambda: RetinaNetDecoder(), "score_threshold", 0.05, "RetinaNet score threshold"),
    (lambda: RetinaNetDecoder(), "pre_nms_top_k", 1000, "RetinaNet top-k per level"),
    (lambda: RetinaNetDecoder(), "iou_threshold", 0.5, "RetinaNet NMS"),
    (lambda: RetinaNetDecoder(), "max_detections", 100, "RetinaNet detections"),
    # PointINS (arXiv 2003.06148): no code; these are the inferred defaults of the specification
    # (template 3x3x256, Mask R-CNN's 14 -> 28 head with 4 convs of 256)
    (lambda: InstanceAwareConv(), "template_size", 3, "PointINS k (inferred)"),
    (lambda: InstanceAwareConv(), "template_channels", 256, "PointINS C (inferred)"),
    (lambda: PointINSMaskHead(), "resize", 14, "PointINS mask head 14x14 (inferred)"),
    (lambda: PointINSMaskHead(), "num_convs", 4, "PointINS mask head convs (inferred)"),
    (lambda: PointINSMaskHead(), "channels", 256, "PointINS mask head width (inferred)"),
]


@pytest.mark.parametrize("make, attribute, value, source", PAPER_DEFAULTS, ids=[row[3] for row in PAPER_DEFAULTS])
def test_paper_default(make, attribute, value, source):
    actual = getattr(make(), attribute)
    if isinstance(value, tuple):
        assert tuple(actual) == value, source
    else:
        assert actual == pytest.approx(value, rel=0, abs=0), source


def test_box_coder_weights_constant_is_ssd_and_faster_rcnn():
    assert BOX_CODER_WEIGHTS == (10.0, 10.0, 5.0, 5.0)


def test_rezero_alpha_starts_at_zero():
    """ReZero (arXiv 2003.04887, eq. 3): x + α F(x) with α initialised to 0."""
    layer = ReZero(keras.layers.Dense(4))
    layer.build((2, 4))
    assert float(keras.ops.convert_to_numpy(layer.alpha)) == 0.0
