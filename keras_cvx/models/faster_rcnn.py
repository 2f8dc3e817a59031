"""Faster R-CNN with a feature pyramid, with the sibling box head or TSD's task-aware head,
and softmax, sigmoid, Equalization Loss or EQL v2 classification, in one Keras model.

Papers: "Faster R-CNN: Towards Real-Time Object Detection with Region Proposal Networks",
arXiv 1506.01497; "Feature Pyramid Networks for Object Detection", arXiv 1612.03144;
"Revisiting the Sibling Head in Object Detector" (TSD), arXiv 2003.07540, as released in
Sense-X/TSD (mmdet v1, ``faster_rcnn_r50_fpn_TSD_1x.py``); "Equalization Loss for Long-Tailed
Object Recognition", arXiv 2003.05176; "Equalization Loss v2", arXiv 2012.08548.

Anatomy (every part is a constructor argument, defaults in brackets)::

    images (RGB 0..255) - pixel_mean
      -> backbone [ResNet-50]                 {"C2", "C3", "C4", "C5"}
      -> neck [FeaturePyramid P2-P6]          P6 = max_pool(P5, 1, stride 2), 256 channels
      -> rpn_head [RPNHead]                   objectness and deltas of 3 anchors per location
      -> proposals [ProposalGenerator]        per-level top-k, decode, clip, NMS 0.7, top-k
                                              (training 2000 / 2000, inference 1000 / 1000)
      -> RoIAlign 7x7 of each proposal on its level of P2-P5 (mmdet v1's level rule
         floor(log2(sqrt(wh) / 56)), legacy geometry aligned=False, 2x2 samples per bin)
      -> box_head: "sibling" [SiblingBoxHead: 2 FC1024 -> logits, class-specific deltas]
                   or "tsd" [TSDHead: offsets -> task-aware pooling -> two FC1024x2 branches,
                   the sibling head kept for training]
    training:  anchor_generator [FPNAnchorGenerator] + rpn_label_encoder [RPNLabelEncoder]
               (IoU 0.7 / 0.3, 256 anchors at <= 50% positive) -> RPN losses;
               roi_sampler [RoISampler] (GT added, IoU 0.5, 512 RoIs at 25% positive)
               -> box-head losses (and TSD's, and the progressive constraints)
    inference: decoder [RCNNDecoder] (score > 0.05, class-aware NMS 0.5, 100 detections) on the
               TSD branches' outputs at the shifted proposals P̂_r (TSD), or the sibling head's

Losses (``compute_loss``; each term is the Keras metric of its name, shown in ``model.fit``'s
and the Trainer's logs, and in the dict ``loss_terms`` returns), all with weight 1 (TSD §4)::

    loss_rpn_cls = Σ_sampled BCE(objectness) / #sampled anchors
    loss_rpn_box = Σ_positive SmoothL1_{β=1/9}(deltas - targets) / #sampled anchors
    loss_cls     = classification loss of the sampled RoIs (``classification_loss``):
                   softmax CE / sigmoid BCE Σ_classes / EQL / EQL v2, averaged over RoIs
    loss_box     = Σ_positive SmoothL1_{β=1}(deltas[class] - targets) / #sampled RoIs
    (TSD) loss_tsd_cls, loss_tsd_box: the same for the TSD branches, box targets relative to
          P̂_r = P + ΔR (not detached: TSD §4, the regression target carries ΔR's gradient)
    (TSD) loss_pc_cls = mean_RoIs max(0, sg(p) + sg(min(1 - p, m_c)) - q)   p, q the true
          class's probability under the sibling and the TSD head (eq. 7; negatives included)
    (TSD) loss_pc_loc = mean_positives max(0, sg(u) + sg(min(1 - u, m_r)) - v)   u, v the IoU
          of the sibling's and TSD's decoded boxes with their ground truth (eq. 8)

EQL v2's gradient statistics are collected from the head used at inference (the TSD
classification branch with ``box_head="tsd"``); the sibling head's loss uses the same weights.

Each term is the replica's mean (``replica_share``: under ``tf.distribute`` the replicas'
losses add up to the global batch's), as mmdet's per-GPU means.

Ground truth (``y``, the ``keras_cvx.data.coco`` contract): ``boxes [B, M, 4]`` ``xyxy``
pixels of the padded input, ``labels [B, M]`` 0-based (``-1`` padding).

Inference (``predict_step``): the detection contract ``{"boxes" [B, 100, 4] (clipped to the
input), "scores", "classes", "num_detections"}``.

Differences from the reference implementation (mmdet v1, which the TSD code uses):

* static shapes: the image size is fixed (``image_size``, a multiple of 32); proposals and
  sampled RoIs are padded slots;
* background is the last class column (mmdet v2 / the package's losses), not the first;
* box coding, IoUs and widths have no "+1" (the deformable pooling of TSD keeps mmdet v1's
  geometry, and P̂_r's shift uses its "+1" sizes, as the pooling does);
* anchors crossing the image border are not ignored (mmdet v2 / Detectron2);
* the backbone is trained entirely with its BatchNorm in training mode unless you freeze it
  (the reference freezes the stem and res2 and uses frozen BN with ImageNet weights).
"""

import copy

import keras
import numpy as np
from keras import ops

from keras_cvx.heads.roi_box import SiblingBoxHead
from keras_cvx.heads.rpn import RPNHead
from keras_cvx.heads.tsd import TSDHead
from keras_cvx.layers.proposal_generator import ProposalGenerator
from keras_cvx.layers.rcnn_decoder import CLASSIFICATION_LOSSES, RCNNDecoder
from keras_cvx.losses.equalization import EqualizationLoss
from keras_cvx.losses.equalization_v2 import EqualizationLossV2
from keras_cvx.losses.multibox import smooth_l1
from keras_cvx.losses.progressive_constraint import (
    localization_progressive_constraint,
    progressive_constraint,
    true_class_probability,
)
from keras_cvx.losses.replicas import replica_share
from keras_cvx.models.anchor_generators.fpn import FPNAnchorGenerator
from keras_cvx.models.detector_parts import (
    IMAGENET_MEAN,
    Detector,
    deserialize_part,
    detector_backbone,
    detector_image_size,
)
from keras_cvx.models.label_encoders.roi import RoISampler
from keras_cvx.models.label_encoders.rpn import RPNLabelEncoder
from keras_cvx.models.necks.fpn import FeaturePyramid
from keras_cvx.ops.boxes import BOX_CODER_WEIGHTS, decode_boxes, encode_boxes
from keras_cvx.ops.deformable_roi_pool import mmdet_roi_level
from keras_cvx.ops.roi_align import multilevel_roi_align
from keras_cvx.validation import (
    check_labels,
    require_choice,
    require_positive,
    require_positive_int,
    require_unit_interval,
)

BOX_HEADS = ("sibling", "tsd")
RPN_LOSS_NAMES = ("loss_rpn_cls", "loss_rpn_box")
RCNN_LOSS_NAMES = ("loss_cls", "loss_box")
TSD_LOSS_NAMES = ("loss_tsd_cls", "loss_tsd_box", "loss_pc_cls", "loss_pc_loc")
RPN_SMOOTH_L1_BETA = 1.0 / 9.0
"""β of the RPN's SmoothL1 box loss (mmdet v1's ``rpn`` config)."""


def _per_class(deltas, labels):
    """``deltas [B, R, O, 4]`` at each RoI's class (clamped to the last column) -> ``[B, R, 4]``."""
    column = ops.clip(labels, 0, deltas.shape[2] - 1)
    return ops.take_along_axis(ops.cast(deltas, "float32"), column[:, :, None, None], axis=2)[:, :, 0]


@keras.saving.register_keras_serializable(package="keras_cvx")
class FasterRCNN(Detector):
    """Faster R-CNN + FPN with a sibling or TSD box head (see the module docstring).

    Papers: Faster R-CNN (arXiv 1506.01497), FPN (arXiv 1612.03144), TSD (arXiv 2003.07540),
    Equalization Loss (arXiv 2003.05176) and EQL v2 (arXiv 2012.08548).

    Args:
        num_classes: object classes K (background is not counted).
        image_size: ``(height, width)`` of the (padded) input, multiples of 32; default (800, 800).
        backbone: ``"resnet50"`` (default) or another name of
            ``keras_cvx.models.detector_parts.RESNET_DEPTHS``, a ``keras.Model`` taking
            ``[B, H, W, 3]`` (RGB minus ``pixel_mean``) and returning a dict with ``"C2"`` ..
            ``"C5"`` at strides 4 .. 32, or such a model serialized.
        width_multiplier: width multiplier of a named ResNet (default 1).
        neck: ``FeaturePyramid`` with P2..P6 (default ``FeaturePyramid(256, 2, 6, "max_pool")``).
        rpn_head: ``RPNHead`` (default: the anchor generator's anchors per location, 5 levels,
            the neck's channels).
        box_head: ``"sibling"`` (default), ``"tsd"``, or a ``SiblingBoxHead`` / ``TSDHead``
            (its ``num_classes`` and ``classification_loss`` must be the model's).
        classification_loss: ``"softmax"`` (default; K + 1 logits, background last),
            ``"sigmoid"`` (K logits, prior 0.001), ``"eql"`` (sigmoid + Equalization Loss) or
            ``"eqlv2"`` (K + 1 sigmoid logits + EQL v2).
        class_frequencies: image-level frequency of each class [K]
            (``keras_cvx.data.class_frequencies``), required by ``"eql"``.
        frequency_threshold: EQL's λ (default 0.00177; classes with ``f < λ`` are tail).
        anchor_generator: ``FPNAnchorGenerator`` (default sizes 32..512 on P2..P6, ratios 0.5, 1, 2).
        rpn_label_encoder: ``RPNLabelEncoder`` (default 0.7 / 0.3, 256 anchors, 50%).
        train_proposals: ``ProposalGenerator`` of training (default 2000 per level, 2000 kept).
        test_proposals: ``ProposalGenerator`` of inference (default 1000 per level, 1000 kept).
        roi_sampler: ``RoISampler`` (default IoU 0.5, 512 RoIs, 25% positive).
        decoder: ``RCNNDecoder`` (default 0.05, NMS 0.5, 100 detections; its
            ``classification_loss`` must be the model's).
        classification_margin: TSD's ``m_c`` (default 0.3, every released config).
        localization_margin: TSD's ``m_r`` (default 0.3).
        pixel_mean: RGB mean subtracted from the input (default ImageNet's).
        seed: seed of the anchor and RoI sampling.

    Call: ``model(images [B, H, W, 3], training=None)`` -> ``{"objectness_logits": [B, N],
    "anchor_deltas": [B, N, 4], "proposals": [B, P, 4], "proposal_valid": [B, P],
    "features": [P2, P3, P4, P5]}`` (``N`` anchors, ``P`` the proposal slots of the training or
    inference generator). ``predict_step(images)`` -> detections (module docstring).

    Example:

    >>> import numpy as np
    >>> from keras_cvx.layers import ProposalGenerator, RCNNDecoder
    >>> from keras_cvx.models import FasterRCNN, FeaturePyramid
    >>> from keras_cvx.models.label_encoders import RoISampler
    >>> model = FasterRCNN(3, image_size=64, backbone="resnet10", width_multiplier=0.125,
    ...                    neck=FeaturePyramid(8, 2, 6, "max_pool"), box_head="tsd",
    ...                    test_proposals=ProposalGenerator(50, 20), decoder=RCNNDecoder(max_detections=5))
    >>> out = model.predict_step(np.zeros((1, 64, 64, 3), "float32"))
    >>> tuple(out["boxes"].shape), tuple(out["classes"].shape)
    ((1, 5, 4), (1, 5))
    """

    xla_on_cpu = True
    """The ``Trainer``'s ``jit_compile="auto"`` trains with XLA on a CPU too: 1.12x faster steps with
    the sibling head, 2.08x with TSD on 2 AVX-512 cores (``benchmarks/faster_rcnn.py``)."""

    def __init__(self, num_classes, image_size=(800, 800), backbone="resnet50", width_multiplier=1.0, neck=None,
                 rpn_head=None, box_head="sibling", classification_loss="softmax", class_frequencies=None,
                 frequency_threshold=0.00177, anchor_generator=None, rpn_label_encoder=None, train_proposals=None,
                 test_proposals=None, roi_sampler=None, decoder=None, classification_margin=0.3,
                 localization_margin=0.3, pixel_mean=IMAGENET_MEAN, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = require_positive_int("num_classes", int(num_classes) if isinstance(
            num_classes, np.integer) else num_classes)
        self.image_size = detector_image_size(image_size)
        self.width_multiplier = require_positive("width_multiplier", width_multiplier)
        self.classification_loss = require_choice("classification_loss", classification_loss,
                                                  CLASSIFICATION_LOSSES)
        self.classification_margin = require_unit_interval("classification_margin", classification_margin)
        self.localization_margin = require_unit_interval("localization_margin", localization_margin)
        if len(pixel_mean) != 3:
            raise ValueError(f"`pixel_mean` must be 3 numbers (R, G, B), got {pixel_mean!r}.")
        self.pixel_mean = tuple(float(m) for m in pixel_mean)
        self.seed = seed
        self.frequency_threshold = float(frequency_threshold)
        self.class_frequencies = None if class_frequencies is None else [float(f) for f in class_frequencies]
        if self.classification_loss == "eql":
            if self.class_frequencies is None or len(self.class_frequencies) != self.num_classes:
                raise ValueError(f"classification_loss='eql' needs `class_frequencies`: one frequency per class "
                                 f"({self.num_classes}), got {class_frequencies!r}.")

        self.backbone, self._backbone_shapes = detector_backbone(
            backbone, self.image_size, self.width_multiplier, ("C2", "C3", "C4", "C5"))
        self.neck = deserialize_part(neck, lambda: FeaturePyramid(256, 2, 6, "max_pool"))
        if (self.neck.min_level, self.neck.max_level) != (2, 6):
            raise ValueError(f"`neck` must give P2..P6, got P{self.neck.min_level}..P{self.neck.max_level}.")
        self.anchor_generator = deserialize_part(anchor_generator, FPNAnchorGenerator)
        if len(self.anchor_generator.strides) != 5:
            raise ValueError(f"`anchor_generator` must have 5 levels (P2..P6), got strides "
                             f"{self.anchor_generator.strides}.")
        self.rpn_head = deserialize_part(rpn_head, lambda: RPNHead(
            self.anchor_generator.anchors_per_location, 5, self.neck.channels))
        if self.rpn_head.anchors_per_location != self.anchor_generator.anchors_per_location:
            raise ValueError(f"`rpn_head` predicts {self.rpn_head.anchors_per_location} anchors per location; the "
                             f"anchor generator makes {self.anchor_generator.anchors_per_location}.")
        self.box_head = self._make_box_head(box_head)
        self.rpn_label_encoder = deserialize_part(rpn_label_encoder, RPNLabelEncoder)
        self.train_proposals = deserialize_part(train_proposals, ProposalGenerator)
        self.test_proposals = deserialize_part(test_proposals, lambda: ProposalGenerator(1000, 1000))
        self.roi_sampler = deserialize_part(roi_sampler, lambda: RoISampler(self.num_classes))
        if self.roi_sampler.num_classes != self.num_classes:
            raise ValueError(f"`roi_sampler` has num_classes={self.roi_sampler.num_classes}; the model has "
                             f"{self.num_classes}.")
        self.decoder = deserialize_part(decoder, lambda: RCNNDecoder(self.classification_loss))
        if self.decoder.classification_loss != self.classification_loss:
            raise ValueError(f"`decoder` scores {self.decoder.classification_loss!r} logits; the model trains "
                             f"{self.classification_loss!r}.")
        self.equalization_v2 = (EqualizationLossV2(self.num_classes, name="equalization_v2")
                                if self.classification_loss == "eqlv2" else None)
        self._sigmoid_weights = None
        if self.classification_loss in ("sigmoid", "eql"):
            self._sigmoid_weights = (EqualizationLoss(self.class_frequencies, self.frequency_threshold)
                                     if self.classification_loss == "eql"
                                     else EqualizationLoss(tail_mask=np.zeros(self.num_classes)))
        self.seed_generator = keras.random.SeedGenerator(seed)
        names = RPN_LOSS_NAMES + RCNN_LOSS_NAMES + (TSD_LOSS_NAMES if self.is_tsd else ())
        self.loss_trackers = [keras.metrics.Mean(name=name) for name in names]

        self._pyramid_shapes = self.neck.compute_output_shape(self._backbone_shapes)
        level_shapes = [self._pyramid_shapes[f"P{l}"] for l in range(2, 7)]
        self.anchors = self.anchor_generator(self.image_size, [s[1:3] for s in level_shapes])
        per_location = self.anchor_generator.anchors_per_location
        self.level_sizes = tuple(int(s[1] * s[2] * per_location) for s in level_shapes)
        self.build((None,) + self.image_size + (3,))

    def _make_box_head(self, box_head):
        if isinstance(box_head, str):
            box_head = require_choice("box_head", box_head, BOX_HEADS)
            head_class = TSDHead if box_head == "tsd" else SiblingBoxHead
            return head_class(self.num_classes, classification_loss=self.classification_loss, name="box_head")
        box_head = deserialize_part(box_head, None)
        if not isinstance(box_head, (SiblingBoxHead, TSDHead)):
            raise ValueError(f"`box_head` must be one of {BOX_HEADS}, a SiblingBoxHead or a TSDHead, got {box_head!r}.")
        if box_head.num_classes != self.num_classes or box_head.classification_loss != self.classification_loss:
            raise ValueError(f"`box_head` has num_classes={box_head.num_classes}, classification_loss="
                             f"{box_head.classification_loss!r}; the model has {self.num_classes}, "
                             f"{self.classification_loss!r}.")
        return box_head

    @property
    def is_tsd(self):
        return isinstance(self.box_head, TSDHead)

    @property
    def roi_output_size(self):
        return self.box_head.output_size if self.is_tsd else 7

    def build(self, input_shape=None):
        """Builds every part from the static shapes (done by ``__init__``)."""
        if self.built:
            return
        pyramid = [self._pyramid_shapes[f"P{l}"] for l in range(2, 7)]
        if not self.neck.built:
            self.neck.build(self._backbone_shapes)
        if not self.rpn_head.built:
            self.rpn_head.build(pyramid)
        if not self.box_head.built:
            k = self.roi_output_size
            roi_shape = (None, None, k, k, self.neck.channels)
            if self.is_tsd:
                self.box_head.build(roi_shape, pyramid[:4], (None, None, 4), (None, None))
            else:
                self.box_head.build(roi_shape)
        if self.equalization_v2 is not None and not self.equalization_v2.built:
            self.equalization_v2.build((None,), (None, self.num_classes + 1))
        self.built = True

    def call(self, images, training=None):
        x = ops.cast(images, "float32") - np.asarray(self.pixel_mean, "float32")
        features = self.backbone(x, training=training)
        pyramid = self.neck({k: features[k] for k in ("C2", "C3", "C4", "C5")})
        levels = [pyramid[f"P{l}"] for l in range(2, 7)]
        rpn = self.rpn_head(levels)
        generator = self.train_proposals if training else self.test_proposals
        proposals = generator(rpn["objectness_logits"], rpn["anchor_deltas"], self.anchors,
                              level_sizes=self.level_sizes, image_size=self.image_size)
        return {"objectness_logits": rpn["objectness_logits"], "anchor_deltas": rpn["anchor_deltas"],
                "proposals": proposals["proposals"], "proposal_valid": proposals["valid"], "features": levels[:4]}

    def roi_heads(self, features, rois, training=None):
        """The box head on ``rois [B, R, 4]``: RoIAlign 7x7 (mmdet v1 levels and geometry), then
        the sibling head (``class_logits``, ``box_deltas``) or the TSD head (adds
        ``shifted_proposals``, ``region_offsets`` and, in training, ``sibling_class_logits``,
        ``sibling_box_deltas``)."""
        rois = ops.stop_gradient(ops.cast(rois, "float32"))
        levels = mmdet_roi_level(rois, 2, 5)
        roi_features = multilevel_roi_align(features, rois, self.roi_output_size, min_level=2, sampling_ratio=2,
                                            aligned=False, levels=levels)
        if self.is_tsd:
            return dict(self.box_head(roi_features, features, rois, levels, training=training))
        return dict(self.box_head(roi_features))

    # ------------------------------------------------------------------ training

    def _check_targets(self, y):
        if not isinstance(y, dict) or any(k not in y for k in ("boxes", "labels")):
            raise ValueError("FasterRCNN needs targets {'boxes', 'labels'} (keras_cvx.data.coco_dataset), got "
                             f"{list(y) if isinstance(y, dict) else type(y).__name__}.")
        check_labels(y["labels"], self.num_classes)

    def _rpn_losses(self, y, y_pred, image_weight):
        targets = self.rpn_label_encoder(y["boxes"], y["labels"], self.anchors, self.seed_generator)
        slot = ops.maximum(targets["indices"], 0)
        labels = targets["labels"]
        used = ops.cast(labels >= 0, "float32") * image_weight[:, None]
        positive = ops.cast(labels == 1, "float32") * image_weight[:, None]
        logits = ops.take_along_axis(ops.cast(y_pred["objectness_logits"], "float32"), slot, axis=1)
        bce = ops.relu(logits) - logits * ops.cast(labels == 1, "float32") + ops.log1p(ops.exp(-ops.abs(logits)))
        deltas = ops.take_along_axis(ops.cast(y_pred["anchor_deltas"], "float32"), slot[..., None], axis=1)
        box = ops.sum(smooth_l1(deltas - targets["box_targets"], RPN_SMOOTH_L1_BETA), axis=-1)
        count = ops.maximum(ops.sum(ops.cast(labels >= 0, "float32")), 1.0)
        return {"loss_rpn_cls": replica_share(ops.sum(bce * used) / count),
                "loss_rpn_box": replica_share(ops.sum(box * positive) / count)}

    def _classification_rows(self, logits, labels, training):
        """Per-RoI classification losses ``[B, R]`` (0 on unused slots) of ``classification_loss``."""
        flat_labels = ops.reshape(labels, (-1,))
        logits = ops.cast(ops.reshape(logits, (flat_labels.shape[0], -1)), "float32")
        valid = flat_labels >= 0
        if self.classification_loss == "softmax":
            rows = -ops.take_along_axis(ops.log_softmax(logits, axis=-1), ops.maximum(flat_labels, 0)[:, None],
                                        axis=1)[:, 0]
        elif self.classification_loss == "eqlv2":
            rows = self.equalization_v2(flat_labels, logits, training=training)
            rows = rows * ops.maximum(ops.sum(ops.cast(valid, "float32")), 1.0) / flat_labels.shape[0]
        else:
            weights, targets, _ = self._sigmoid_weights.equalization_weights(flat_labels)
            bce = ops.relu(logits) - logits * targets + ops.log1p(ops.exp(-ops.abs(logits)))
            rows = ops.sum(weights * bce, axis=-1)
        return ops.reshape(ops.where(valid, rows, 0.0), ops.shape(labels))

    def _head_losses(self, logits, deltas, labels, box_targets, roi_weight, count, training):
        positive = ops.cast((labels >= 0) & (labels < self.num_classes), "float32") * roi_weight
        cls = ops.sum(self._classification_rows(logits, labels, training) * roi_weight) / count
        box = ops.sum(ops.sum(smooth_l1(_per_class(deltas, labels) - box_targets), axis=-1) * positive) / count
        return replica_share(cls), replica_share(box)

    def loss_terms(self, y, y_pred, sample_weight=None):
        """The loss terms (float32 scalars, each the replica's share; module docstring);
        ``sample_weight [B]`` weighs images."""
        self._check_targets(y)
        batch_ones = ops.ones_like(ops.cast(y["labels"][:, 0], "float32"))
        image_weight = batch_ones if sample_weight is None else ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
        terms = self._rpn_losses(y, y_pred, image_weight)

        sample = self.roi_sampler(y_pred["proposals"], y_pred["proposal_valid"], y["boxes"], y["labels"],
                                  self.seed_generator)
        labels, rois = sample["labels"], sample["rois"]
        head = self.roi_heads(y_pred["features"], rois, training=True)
        roi_weight = ops.cast(labels >= 0, "float32") * image_weight[:, None]
        count = ops.maximum(ops.sum(ops.cast(labels >= 0, "float32")), 1.0)
        sibling = "sibling_" if self.is_tsd else ""
        terms["loss_cls"], terms["loss_box"] = self._head_losses(
            head[sibling + "class_logits"], head[sibling + "box_deltas"], labels, sample["box_targets"], roi_weight,
            count, not self.is_tsd)
        if self.is_tsd:
            shifted = head["shifted_proposals"]
            tsd_targets = encode_boxes(sample["matched_boxes"], shifted, BOX_CODER_WEIGHTS)  # not detached
            positive = (labels >= 0) & (labels < self.num_classes)
            tsd_targets = ops.where(positive[..., None], tsd_targets, 0.0)
            terms["loss_tsd_cls"], terms["loss_tsd_box"] = self._head_losses(
                head["class_logits"], head["box_deltas"], labels, tsd_targets, roi_weight, count, True)
            terms.update(self._progressive_constraints(head, sample, rois, shifted, roi_weight, positive))
        return terms

    def _progressive_constraints(self, head, sample, rois, shifted, roi_weight, positive):
        labels = sample["labels"]
        p = true_class_probability(head["sibling_class_logits"], labels, self.classification_loss)
        q = true_class_probability(head["class_logits"], labels, self.classification_loss)
        sibling_boxes = decode_boxes(_per_class(head["sibling_box_deltas"], labels), rois, BOX_CODER_WEIGHTS)
        tsd_boxes = decode_boxes(_per_class(head["box_deltas"], labels), shifted, BOX_CODER_WEIGHTS)
        return {"loss_pc_cls": replica_share(progressive_constraint(p, q, self.classification_margin, roi_weight)),
                "loss_pc_loc": replica_share(localization_progressive_constraint(
                    sibling_boxes, tsd_boxes, sample["matched_boxes"], roi_weight * ops.cast(positive, "float32"),
                    self.localization_margin))}

    # ------------------------------------------------------------------ inference

    def decode(self, predictions):
        """Detections (module docstring) from the output of ``call`` at inference."""
        proposals = predictions["proposals"]
        head = self.roi_heads(predictions["features"], proposals, training=False)
        rois = head["shifted_proposals"] if self.is_tsd else proposals
        return self.decoder(head["class_logits"], head["box_deltas"], rois, predictions["proposal_valid"],
                            image_size=self.image_size)

    def get_config(self):
        config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        config.update(
            num_classes=self.num_classes, image_size=list(self.image_size), backbone=serialize(self.backbone),
            width_multiplier=self.width_multiplier, neck=serialize(self.neck), rpn_head=serialize(self.rpn_head),
            box_head=serialize(self.box_head), classification_loss=self.classification_loss,
            class_frequencies=self.class_frequencies, frequency_threshold=self.frequency_threshold,
            anchor_generator=serialize(self.anchor_generator), rpn_label_encoder=serialize(self.rpn_label_encoder),
            train_proposals=serialize(self.train_proposals), test_proposals=serialize(self.test_proposals),
            roi_sampler=serialize(self.roi_sampler), decoder=serialize(self.decoder),
            classification_margin=self.classification_margin, localization_margin=self.localization_margin,
            pixel_mean=list(self.pixel_mean), seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**copy.deepcopy(config))  # deserialization consumes the nested dicts
