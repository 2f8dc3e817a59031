"""PointINS: instance segmentation from single points of a one-stage detector, with the
instance-aware convolution, on FCOS or RetinaNet, in one Keras model.

Paper: "PointINS: Point-based Instance Segmentation", L. Qi, X. Zhang, Y. Chen, Y. Chen, J. Sun,
J. Jia, arXiv 2003.06148 (v1; journal version IEEE TPAMI 2021). No code was released and only
the abstracts could be read: the instance-aware convolution (an instance-agnostic template per
point, convolved with instance-aware weights per potential instance) and its place on the
box tower of FCOS or RetinaNet are the paper's; every size, the mask head, the mask targets,
the loss and its sampling are **inferred** (the layers' docstrings say which) and configurable.

Anatomy (every part is a constructor argument, defaults in brackets)::

    images (RGB 0..255) - pixel_mean
      -> backbone [ResNet-50]              {"C3", "C4", "C5"}
      -> neck [FeaturePyramid P3-P7]       256 channels
      -> head                              detector="fcos":      FCOSHead (class, box, center-ness)
                                           detector="retinanet": RetinaNetHead (A = 9 anchors)
                                           and the box tower's maps G_l
      -> instance_conv [InstanceAwareConv] at the selected points only: template T_p (k x k x C
                                           from one 3x3 conv, depth-to-space) times the weights
                                           W_{p,a} of the potential instance (p, a)
      -> mask_head [PointINSMaskHead]      14x14 -> 4 convs -> 28x28 mask logits
    training:  targets of the detector (FCOS: FCOSLocations + FCOSLabelEncoder with the masks'
               centres of mass; RetinaNet: FPNAnchorGenerator + RetinaNetLabelEncoder), its
               losses, and the mask loss of up to ``max_proposals`` sampled positives
    inference: the detector's 100 detections -> their instance-aware features -> 28x28 masks
               pasted into the detected boxes (bilinear) -> threshold 0.5

Losses (``loss_terms``; shown in the ``Trainer``'s logs)::

    fcos:      loss_cls, loss_box, loss_ctr of FCOS (keras_cvx.losses.fcos)
    retinanet: loss_cls = Σ focal(α 0.25, γ 2) over non-ignored anchors x classes / N_pos
               loss_box = Σ_pos smooth-L1_β(deltas - targets) / N_pos      β = 0.1 (Detectron2)
    loss_mask = λ · mean over the sampled positives of the mean per-pixel sigmoid BCE of the
                28x28 logits against the ground-truth mask cropped to the ground-truth box by
                RoIAlign (binarised at 0.5; Mask R-CNN's target)          λ = 1 (inferred)

Under ``tf.distribute`` ``N_pos`` (and FCOS's ``Σ c*``) are the counts of the global batch
(``loss_normalizers``); the mask term is the replica's share of its per-replica mean.

Ground truth (``y``, the ``keras_cvx.data.coco`` contract): ``boxes [B, M, 4]`` ``xyxy``
pixels, ``labels [B, M]`` (``-1`` padding) and ``masks [B, M, H / s, W / s]`` 0/1 on the grid
of stride ``s = mask_stride`` (``coco_dataset(..., mask_stride=s)``).

Inference (``predict_step``): ``{"boxes" [B, 100, 4] (clipped to the image), "scores",
"classes", "num_detections", "masks"}`` with ``masks`` uint8 ``[B, 100, H, W]`` 0/1 full-image
masks at the model's input resolution (the 28x28 mask pasted into its box), as ``CondInst``
returns them, so the SavedModel's ``detection_masks`` and the evaluation are the same.

Differences from what the paper describes or implies: static shapes (fixed ``image_size``, a
fixed number of mask-loss slots, a uniformly random subset of the batch's positives when there
are more); ground-truth masks come at stride ``mask_stride`` of the input rather than at full
resolution; the backbone trains with its BatchNorm in training mode unless you freeze it.
"""

import copy

import keras
import numpy as np
from keras import ops

from keras_cvx.heads.fcos import FCOSHead
from keras_cvx.heads.pointins import PointINSMaskHead
from keras_cvx.heads.retinanet import RetinaNetHead
from keras_cvx.layers.fcos_decoder import FCOSDecoder
from keras_cvx.layers.instance_aware_conv import InstanceAwareConv
from keras_cvx.layers.retinanet_decoder import RetinaNetDecoder
from keras_cvx.losses.fcos import fcos_loss_terms, fcos_normalizers
from keras_cvx.losses.focal import sigmoid_focal_loss
from keras_cvx.losses.multibox import smooth_l1
from keras_cvx.losses.replicas import normalized_sum, replica_share
from keras_cvx.models.anchor_generators.fcos import FCOSLocations
from keras_cvx.models.anchor_generators.fpn import FPNAnchorGenerator
from keras_cvx.models.detector_parts import (
    IMAGENET_MEAN,
    check_instance_targets,
    Detector,
    deserialize_part,
    detector_backbone,
    detector_image_size,
)
from keras_cvx.models.label_encoders.fcos import FCOSLabelEncoder, mask_centers
from keras_cvx.models.label_encoders.retinanet import RetinaNetLabelEncoder
from keras_cvx.models.necks.fpn import FeaturePyramid
from keras_cvx.ops.boxes import clip_boxes
from keras_cvx.ops.masks import crop_mask_targets, paste_masks
from keras_cvx.ops.sampling import sample_subset
from keras_cvx.validation import require_choice, require_positive, require_positive_int

DETECTORS = ("fcos", "retinanet")
"""The one-stage detectors PointINS runs on (arXiv 2003.06148: RetinaNet and FCOS)."""

RETINANET_ANCHOR_SCALES = (1.0, 2.0 ** (1.0 / 3.0), 2.0 ** (2.0 / 3.0))
"""RetinaNet's three anchor scales per octave (arXiv 1708.02002 Sec. 4), with ratios 1:2, 1:1,
2:1 and sizes 32..512 on P3..P7: A = 9 anchors per location."""


def _retinanet_anchors():
    return FPNAnchorGenerator(strides=(8, 16, 32, 64, 128), sizes=(32, 64, 128, 256, 512),
                              scales=RETINANET_ANCHOR_SCALES)


@keras.saving.register_keras_serializable(package="keras_cvx")
class PointINS(Detector):
    """PointINS instance segmentation model (see the module docstring).

    Paper: "PointINS: Point-based Instance Segmentation", arXiv 2003.06148 (the instance-aware
    convolution; sizes, mask head and training inferred).

    Args:
        num_classes: object classes K (no background column).
        image_size: ``(height, width)`` of the (padded) input, multiples of 32; default (800, 800).
        backbone: ``"resnet50"`` (default) or another name of ``RESNET_DEPTHS``, a ``keras.Model``
            taking ``[B, H, W, 3]`` (RGB minus ``pixel_mean``) and returning a dict with ``"C3"``,
            ``"C4"``, ``"C5"``, or such a model serialized.
        width_multiplier: width multiplier of a named ResNet (default 1).
        detector: ``"fcos"`` (default; A = 1 potential instance per location) or ``"retinanet"``
            (A = 9 anchors per location).
        neck: ``FeaturePyramid`` with P3..P7 (default ``FeaturePyramid(256, 3, 7, "conv")``).
        head: the detector's head, returning its box tower (``FCOSHead(K,
            return_box_features=True)`` or ``RetinaNetHead(K, 9, return_box_features=True)``).
        instance_conv: ``InstanceAwareConv`` (default k 3, C 256, depthwise, A weight sets).
        mask_head: ``PointINSMaskHead`` (default 14x14 -> 28x28, 4 convs of 256).
        anchor_generator: ``FCOSLocations`` (fcos) or ``FPNAnchorGenerator`` with RetinaNet's
            anchors (retinanet).
        label_encoder: ``FCOSLabelEncoder`` or ``RetinaNetLabelEncoder`` (IoU 0.5 / 0.4).
        decoder: ``FCOSDecoder`` (NMS 0.6) or ``RetinaNetDecoder`` (NMS 0.5); 100 detections.
        max_proposals: mask-loss slots per replica batch (default 256; Mask R-CNN trains about
            128 positive RoIs per image).
        mask_stride: stride of the ground-truth masks in ``y`` (default 4).
        mask_loss_weight: λ of the mask loss (default 1).
        box_loss_beta: β of RetinaNet's smooth-L1 box loss (default 0.1, Detectron2's).
        mask_threshold: mask probability threshold of ``predict_step`` (default 0.5).
        pixel_mean: RGB mean subtracted from the input (default ImageNet's).
        seed: seed of the mask-loss sampling.

    Call: ``model(images [B, H, W, 3], training=None)`` -> the head's outputs
    (``class_logits [B, N, K]``, ``box_regression [B, N, 4]``, FCOS's ``centerness_logits [B, N]``;
    ``N`` the locations (fcos) or anchors (retinanet)) and ``box_features``, the box tower's
    maps ``[B, H_l, W_l, C]`` of P3..P7. ``predict_step(images)`` -> detections with masks.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.heads import FCOSHead, PointINSMaskHead
    >>> from keras_cvx.layers import FCOSDecoder, InstanceAwareConv
    >>> from keras_cvx.models import FeaturePyramid, PointINS
    >>> model = PointINS(3, image_size=64, backbone="resnet10", width_multiplier=0.125,
    ...                  neck=FeaturePyramid(16), head=FCOSHead(3, groups=4, return_box_features=True),
    ...                  instance_conv=InstanceAwareConv(template_channels=8),
    ...                  mask_head=PointINSMaskHead(channels=8), decoder=FCOSDecoder(max_detections=5))
    >>> out = model.predict_step(np.zeros((1, 64, 64, 3), "float32"))
    >>> tuple(out["masks"].shape), tuple(out["boxes"].shape)
    ((1, 5, 64, 64), (1, 5, 4))
    """

    xla_on_cpu = False
    """The ``Trainer``'s ``jit_compile="auto"`` trains without XLA on a CPU: the example's model
    (``examples/train_pointins.py`` defaults) ran 60 steps in 29 s without XLA and 52 s with it
    (compilation included) on 2 AVX-512 cores."""

    def __init__(self, num_classes, image_size=(800, 800), backbone="resnet50", width_multiplier=1.0,
                 detector="fcos", neck=None, head=None, instance_conv=None, mask_head=None, anchor_generator=None,
                 label_encoder=None, decoder=None, max_proposals=256, mask_stride=4, mask_loss_weight=1.0,
                 box_loss_beta=0.1, mask_threshold=0.5, pixel_mean=IMAGENET_MEAN, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = require_positive_int("num_classes", int(num_classes) if isinstance(
            num_classes, np.integer) else num_classes)
        self.image_size = detector_image_size(image_size)
        self.width_multiplier = require_positive("width_multiplier", width_multiplier)
        self.detector = require_choice("detector", detector, DETECTORS)
        self.max_proposals = require_positive_int("max_proposals", max_proposals)
        self.mask_stride = require_positive_int("mask_stride", mask_stride)
        if any(s % self.mask_stride for s in self.image_size):
            raise ValueError(f"`mask_stride` must divide the image size {self.image_size}, got {mask_stride!r}.")
        self.mask_loss_weight = require_positive("mask_loss_weight", mask_loss_weight)
        self.box_loss_beta = require_positive("box_loss_beta", box_loss_beta)
        if not 0.0 < float(mask_threshold) < 1.0:
            raise ValueError(f"`mask_threshold` must be in (0, 1), got {mask_threshold!r}.")
        self.mask_threshold = float(mask_threshold)
        if len(pixel_mean) != 3:
            raise ValueError(f"`pixel_mean` must be 3 numbers (R, G, B), got {pixel_mean!r}.")
        self.pixel_mean = tuple(float(m) for m in pixel_mean)
        self.seed = seed

        fcos = self.detector == "fcos"
        self.backbone, self._backbone_shapes = detector_backbone(backbone, self.image_size, self.width_multiplier,
                                                                 ("C3", "C4", "C5"))
        self.neck = deserialize_part(neck, FeaturePyramid)
        if (self.neck.min_level, self.neck.max_level) != (3, 7):
            raise ValueError(f"`neck` must give P3..P7, got P{self.neck.min_level}..P{self.neck.max_level}.")
        self.anchor_generator = deserialize_part(anchor_generator, FCOSLocations if fcos else _retinanet_anchors)
        self.num_weight_sets = 1 if fcos else self.anchor_generator.anchors_per_location
        self.head = deserialize_part(head, lambda: FCOSHead(self.num_classes, return_box_features=True) if fcos else
                                     RetinaNetHead(self.num_classes, self.num_weight_sets, return_box_features=True))
        head_class = FCOSHead if fcos else RetinaNetHead
        if (not isinstance(self.head, head_class) or not self.head.return_box_features
                or self.head.num_classes != self.num_classes):
            raise ValueError(f"`head` must be a {head_class.__name__} with `num_classes` = the model's and "
                             f"return_box_features=True for detector={self.detector!r}.")
        if not fcos and self.head.num_anchors != self.num_weight_sets:
            raise ValueError(f"`head` predicts {self.head.num_anchors} anchors per location; `anchor_generator` "
                             f"makes {self.num_weight_sets}.")
        self.instance_conv = deserialize_part(instance_conv, lambda: InstanceAwareConv(
            num_weight_sets=self.num_weight_sets))
        if self.instance_conv.num_weight_sets != self.num_weight_sets:
            raise ValueError(f"`instance_conv` has {self.instance_conv.num_weight_sets} weight sets; the detector has "
                             f"{self.num_weight_sets} potential instances per location.")
        self.mask_head = deserialize_part(mask_head, PointINSMaskHead)
        self.label_encoder = deserialize_part(label_encoder, FCOSLabelEncoder if fcos else RetinaNetLabelEncoder)
        self.decoder = deserialize_part(decoder, FCOSDecoder if fcos else RetinaNetDecoder)
        self.seed_generator = keras.random.SeedGenerator(seed)
        names = ("loss_cls", "loss_box", "loss_ctr", "loss_mask") if fcos else ("loss_cls", "loss_box", "loss_mask")
        self.loss_trackers = [keras.metrics.Mean(name=name) for name in names]

        self._pyramid_shapes = self.neck.compute_output_shape(self._backbone_shapes)
        feature_sizes = [self._pyramid_shapes[f"P{l}"][1:3] for l in range(3, 8)]
        if fcos:
            self.locations, self.levels = self.anchor_generator(self.image_size, feature_sizes)
            self.location_strides = np.asarray(self.anchor_generator.strides, np.float32)[self.levels]
        else:
            self.anchors = self.anchor_generator(self.image_size, feature_sizes)
        self.level_sizes = tuple(int(h * w) * self.num_weight_sets for h, w in feature_sizes)
        self.build((None,) + self.image_size + (3,))

    @property
    def num_predictions(self):
        """Potential instances ``N`` of one image: locations (fcos) or anchors (retinanet)."""
        return sum(self.level_sizes)

    def _mask_feature_shape(self):
        conv = self.instance_conv
        return (None, conv.template_size, conv.template_size, conv.out_channels)

    def build(self, input_shape=None):
        """Builds every part from the static shapes (done by ``__init__``)."""
        if self.built:
            return
        pyramid = [self._pyramid_shapes[f"P{l}"] for l in range(3, 8)]
        for part, shape in [(self.neck, self._backbone_shapes), (self.head, pyramid), (self.instance_conv, pyramid),
                            (self.mask_head, self._mask_feature_shape())]:
            if not part.built:  # parts deserialized from a config arrive built (their build_config)
                part.build(shape)
        self.built = True

    def call(self, images, training=None):
        x = ops.cast(images, "float32") - np.asarray(self.pixel_mean, "float32")
        features = self.backbone(x, training=training)
        pyramid = self.neck({k: features[k] for k in ("C3", "C4", "C5")})
        return dict(self.head([pyramid[f"P{l}"] for l in range(3, 8)]))

    def compute_output_shape(self, input_shape):
        batch, n = input_shape[0], self.num_predictions
        shapes = {"class_logits": (batch, n, self.num_classes), "box_regression": (batch, n, 4),
                  "box_features": [(batch,) + tuple(self._pyramid_shapes[f"P{l}"][1:3]) + (self.head_channels,)
                                   for l in range(3, 8)]}
        if self.detector == "fcos":
            shapes["centerness_logits"] = (batch, n)
        return shapes

    @property
    def head_channels(self):
        return int(self._pyramid_shapes["P3"][-1])

    # ------------------------------------------------------------------ training

    def assign_targets(self, y):
        """The detector's targets for the ground truth ``y``: ``FCOSLabelEncoder``'s (with the
        masks' centres of mass as sampling centres) or ``RetinaNetLabelEncoder``'s; both hold
        ``labels [B, N]`` (class of positives, negative otherwise) and ``matched_gt [B, N]``."""
        check_instance_targets(self, y)
        if self.detector == "fcos":
            centers = mask_centers(y["masks"], y["boxes"], self.mask_stride)
            return self.label_encoder(y["boxes"], y["labels"], self.locations, self.levels, centers)
        return self.label_encoder(y["boxes"], y["labels"], self.anchors)

    def loss_normalizers(self, y):
        """Counts that normalise the detector's losses, from the ground truth only (float32):
        ``{"num_positives", "centerness_sum"}`` (fcos) or ``{"num_positives"}`` (retinanet).
        ``keras_cvx.training.Trainer`` sums them over the replicas and passes the sums back in
        ``y["loss_normalizers"]``."""
        targets = self.assign_targets(y)
        if self.detector == "fcos":
            return fcos_normalizers(targets)
        return {"num_positives": ops.sum(ops.cast(targets["labels"] >= 0, "float32"))}

    def _retinanet_terms(self, y, y_pred, targets, image_weight):
        labels = targets["labels"]
        positive = ops.cast(labels >= 0, "float32")
        counted = ops.cast(labels >= -1, "float32") * image_weight[:, None]  # -2: ignored anchors
        one_hot = ops.one_hot(ops.maximum(labels, 0), self.num_classes) * positive[..., None]
        focal = ops.sum(sigmoid_focal_loss(one_hot, y_pred["class_logits"]), axis=-1)
        num_positives = ops.sum(positive)
        box = ops.sum(smooth_l1(ops.cast(y_pred["box_regression"], "float32") - targets["box_targets"],
                                self.box_loss_beta), axis=-1)
        return {"loss_cls": normalized_sum(ops.sum(focal * counted), num_positives, y, key="num_positives"),
                "loss_box": normalized_sum(ops.sum(box * positive * image_weight[:, None]), num_positives, y,
                                           key="num_positives")}

    def instance_mask_logits(self, box_features, images, predictions):
        """28x28 mask logits ``[P, m, m]`` of potential instances given by ``images [P]`` and
        ``predictions [P]`` (indices into the ``N`` locations or anchors of an image)."""
        points = predictions // self.num_weight_sets
        weight_sets = predictions % self.num_weight_sets
        return self.mask_head(self.instance_conv(box_features, images, points, weight_sets))

    def _mask_loss(self, y, y_pred, targets, image_weight):
        positive = targets["labels"] >= 0
        n = self.num_predictions
        index, valid = sample_subset(positive, self.max_proposals, self.seed_generator)
        image = index // n
        logits = ops.cast(self.instance_mask_logits(y_pred["box_features"], image, index % n), "float32")
        num_gt = y["masks"].shape[1]
        gt = image * num_gt + ops.maximum(ops.take(ops.reshape(targets["matched_gt"], (-1,)), index), 0)
        gt_masks = ops.take(ops.reshape(y["masks"], (-1,) + tuple(y["masks"].shape[2:])), gt, axis=0)
        gt_boxes = ops.take(ops.reshape(ops.cast(y["boxes"], "float32"), (-1, 4)), gt, axis=0)
        mask_targets = crop_mask_targets(gt_masks, gt_boxes, self.mask_stride, logits.shape[-1])
        bce = ops.relu(logits) - logits * mask_targets + ops.log1p(ops.exp(-ops.abs(logits)))
        weight = ops.cast(valid, "float32") * ops.take(image_weight, image)
        mean = ops.sum(weight * ops.mean(bce, axis=(1, 2))) / ops.maximum(ops.sum(ops.cast(valid, "float32")), 1.0)
        return replica_share(mean) * self.mask_loss_weight

    def loss_terms(self, y, y_pred, sample_weight=None):
        """The loss terms (float32 scalars, each the replica's share; module docstring);
        ``sample_weight [B]`` weighs images."""
        targets = self.assign_targets(y)
        image_weight = ops.ones_like(ops.cast(targets["labels"][:, 0], "float32")) if sample_weight is None else (
            ops.cast(ops.reshape(sample_weight, (-1,)), "float32"))
        if self.detector == "fcos":
            terms = fcos_loss_terms(targets, y_pred, y, image_weight)
        else:
            terms = self._retinanet_terms(y, y_pred, targets, image_weight)
        terms["loss_mask"] = self._mask_loss(y, y_pred, targets, image_weight)
        return terms

    # ------------------------------------------------------------------ inference

    def detections(self, predictions):
        """The detector's detections (``boxes`` unclipped, ``scores``, ``classes``,
        ``num_detections``) and ``"predictions"``: the index into ``N`` of each (``-1`` padding)."""
        if self.detector == "fcos":
            distances = ops.cast(predictions["box_regression"], "float32") * self.location_strides[:, None]
            out = dict(self.decoder(predictions["class_logits"], distances, predictions["centerness_logits"],
                                    self.locations, level_sizes=self.level_sizes))
            out["predictions"] = out.pop("locations")
        else:
            out = dict(self.decoder(predictions["class_logits"], predictions["box_regression"], self.anchors,
                                    level_sizes=self.level_sizes))
            out["predictions"] = out.pop("anchors")
        return out

    def decode(self, predictions):
        """Detections with full-image masks from the output of ``call`` (module docstring)."""
        detections = self.detections(predictions)
        index = detections.pop("predictions")
        valid = index >= 0
        slots = index.shape[1]
        images = ops.zeros_like(index) + ops.arange(ops.shape(index)[0], dtype="int32")[:, None]
        logits = self.instance_mask_logits(predictions["box_features"], ops.reshape(images, (-1,)),
                                           ops.reshape(ops.maximum(index, 0), (-1,)))
        size = logits.shape[-1]
        probabilities = ops.reshape(ops.sigmoid(ops.cast(logits, "float32")), (-1, slots, size, size))
        boxes = clip_boxes(detections["boxes"], self.image_size)
        full = paste_masks(probabilities, boxes, self.image_size)
        detections["masks"] = ops.cast((full > self.mask_threshold) & valid[:, :, None, None], "uint8")
        detections["boxes"] = boxes
        return detections

    def get_config(self):
        config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        config.update(
            num_classes=self.num_classes, image_size=list(self.image_size), backbone=serialize(self.backbone),
            width_multiplier=self.width_multiplier, detector=self.detector, neck=serialize(self.neck),
            head=serialize(self.head), instance_conv=serialize(self.instance_conv),
            mask_head=serialize(self.mask_head), anchor_generator=serialize(self.anchor_generator),
            label_encoder=serialize(self.label_encoder), decoder=serialize(self.decoder),
            max_proposals=self.max_proposals, mask_stride=self.mask_stride, mask_loss_weight=self.mask_loss_weight,
            box_loss_beta=self.box_loss_beta, mask_threshold=self.mask_threshold, pixel_mean=list(self.pixel_mean),
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**copy.deepcopy(config))  # deserialization consumes the nested dicts
