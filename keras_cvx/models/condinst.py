"""CondInst: instance segmentation with FCOS and dynamic mask heads, in one Keras model.

Paper: "Conditional Convolutions for Instance Segmentation", Z. Tian, C. Shen, H. Chen,
ECCV 2020, arXiv 2003.05664, as released in AdelaiDet (configs ``Base-CondInst.yaml``,
``MS_R_50_1x.yaml``); the detector is FCOS ("FCOS: Fully Convolutional One-Stage Object
Detection", arXiv 1904.01355) with the improved-FCOS options.

Anatomy (every part is a constructor argument, defaults in brackets)::

    images (RGB 0..255) - pixel_mean
      -> backbone [ResNet-50]            {"C3", "C4", "C5"} (any model returning those keys)
      -> neck [FeaturePyramid P3-P7]     P6 = conv(P5), P7 = conv(ReLU(P6)), 256 channels
      -> head [FCOSHead]                 class_logits, box_regression, centerness_logits, box tower
      -> controller [CondInstController] mask_params: 169 per location, from the box tower
      -> mask_branch [CondInstMaskBranch] mask_features: P3..P5 -> 8 channels at stride 8
    training:  anchor_generator [FCOSLocations] + label_encoder [FCOSLabelEncoder] -> targets
               -> focal + GIoU + center-ness losses; dice loss of the dynamic heads
                  (mask_head [DynamicMaskHead]) of up to ``max_proposals`` sampled positives
    inference: decoder [FCOSDecoder] -> 100 detections -> their dynamic heads -> masks

Losses (``compute_loss``; the terms are the Keras metrics ``loss_cls``, ``loss_box``,
``loss_ctr``, ``loss_mask`` (and ``loss_sem``), shown in ``model.fit``'s logs, and the dict
``loss_terms(y, y_pred)`` returns)::

    loss_cls  = Σ focal(α 0.25, γ 2) over locations x classes / N_pos
    loss_box  = Σ_pos c* (1 - GIoU) / Σ_pos c*          c* the center-ness targets
    loss_ctr  = Σ_pos BCE(ctr, c*) / N_pos
    loss_mask = mean over the sampled positives of the dice loss at stride 4
    loss_sem  = Σ focal(semantic logits) / #positive pixels x classes   (``semantic_loss=True``)

Under ``tf.distribute`` (``keras_cvx.losses.replicas``) ``compute_loss`` returns the replica's
share of the global-batch loss: ``N_pos`` and ``Σ c*`` are the global counts the
``keras_cvx.training.Trainer`` sums from ``loss_normalizers(y)``; the dice and semantic
terms are per-replica means (``replica_share``), as AdelaiDet's per-GPU means.

Ground truth (``y``, the ``keras_cvx.data.coco`` contract): ``boxes [B, M, 4]`` ``xyxy``
pixels, ``labels [B, M]`` (``-1`` padding) and ``masks [B, M, H / 4, W / 4]`` 0/1 on the
stride-4 grid (``coco_dataset(..., mask_stride=4)``); their centres of mass are the
center-sampling centres.

Inference (``predict_step``; AdelaiDet ``postprocess``): ``FCOSDecoder`` (score =
sqrt(cls x ctr) above 0.05, top 1000 per level, class-aware NMS 0.6, 100 detections), the
dynamic head of every detection, sigmoid, ``aligned_bilinear`` x4 to the input resolution,
threshold 0.5. Output ``{"boxes" [B, 100, 4] (clipped to the image), "scores", "classes",
"num_detections", "masks"}`` with ``masks`` uint8 ``[B, 100, H, W]`` 0/1: full-image masks
(not cropped by their box) at the model's input resolution, zeros on padding rows. The
exported SavedModel maps them to the original image (``keras_cvx.export``).

Differences from the reference implementation:

* static shapes: the image size is fixed (``image_size``, a multiple of 32); the mask loss
  always runs ``max_proposals`` instance slots (a uniformly random subset of the positives
  of the replica's batch when there are more, unused slots weigh 0). AdelaiDet caps at 500
  per GPU of 2 images; with more images per replica use ``max_proposals = 250 x batch``.
* images are padded with 0 before the mean is subtracted (AdelaiDet pads after
  normalising, so its padding is the mean colour).
* GT masks at stride 4 come from the input pipeline's resize (bilinear on the stride-4
  grid, threshold 0.5) rather than point samples of the full-resolution bitmask; mask
  centres of mass are computed from them (``mask_centers``).
* the box-loss normaliser is ``max(Σ c*, 1)`` (``normalized_sum``; AdelaiDet uses
  ``max(Σ c*, 1e-6)``), different only when the whole global batch has Σ c* < 1.
* the backbone is trained entirely with its BatchNorm in training mode unless you freeze it
  (AdelaiDet freezes the stem and res2 and uses frozen BN with ImageNet weights).
* the semantic-loss targets use the stride-4 masks sampled at the stride-8 centres and their
  stride-4 areas.
"""

import copy

import keras
import numpy as np
from keras import ops

from keras_cvx.heads.condinst import CondInstController, CondInstMaskBranch, CondInstSemanticHead
from keras_cvx.heads.fcos import FCOSHead
from keras_cvx.layers.dynamic_mask_head import DynamicMaskHead
from keras_cvx.layers.fcos_decoder import FCOSDecoder
from keras_cvx.losses.dice import dice_loss
from keras_cvx.losses.focal import sigmoid_focal_loss
from keras_cvx.losses.fcos import fcos_loss_terms, fcos_normalizers
from keras_cvx.losses.replicas import replica_share
from keras_cvx.models.anchor_generators.fcos import FCOSLocations
from keras_cvx.models.detector_parts import (
    IMAGENET_MEAN,
    check_instance_targets,
    Detector,
    deserialize_part,
    detector_backbone,
    detector_image_size,
)
from keras_cvx.models.label_encoders.fcos import FCOSLabelEncoder, mask_centers
from keras_cvx.models.necks.fpn import FeaturePyramid
from keras_cvx.ops.boxes import clip_boxes
from keras_cvx.ops.sampling import sample_subset
from keras_cvx.ops.upsampling import aligned_bilinear
from keras_cvx.validation import require_positive, require_positive_int

LOSS_NAMES = ("loss_cls", "loss_box", "loss_ctr", "loss_mask", "loss_sem")


@keras.saving.register_keras_serializable(package="keras_cvx")
class CondInst(Detector):
    """CondInst instance segmentation model (see the module docstring).

    Paper: "Conditional Convolutions for Instance Segmentation", arXiv 2003.05664.

    Args:
        num_classes: object classes K (no background column).
        image_size: ``(height, width)`` of the (padded) input, multiples of 32; default (800, 800).
        backbone: ``"resnet50"`` (default), ``"resnet10"``, ``"resnet18"``, ``"resnet34"``,
            ``"resnet101"`` (``keras_cvx.models.ResNet``), a ``keras.Model`` taking
            ``[B, H, W, 3]`` (RGB minus ``pixel_mean``) and returning a dict with ``"C3"``, ``"C4"``,
            ``"C5"`` at strides 8, 16, 32, or such a model serialized
            (``keras.saving.serialize_keras_object``; the config stores the backbone that way).
        width_multiplier: width multiplier of a named ResNet (base width 64 x it, at least 8;
            as ``SSDNet``'s); default 1.
        neck: ``FeaturePyramid`` with P3..P7 (default ``FeaturePyramid(256, 3, 7, "conv")``).
        head: an ``FCOSHead`` with ``return_box_features=True`` (default: 4 convs, 5 levels).
        controller: ``CondInstController`` (default: ``mask_head.num_params`` outputs).
        mask_branch: ``CondInstMaskBranch`` (default 128 channels, 8 outputs).
        mask_head: ``DynamicMaskHead`` (default 3 layers of 8 channels, output stride 4).
        anchor_generator: ``FCOSLocations`` (default strides 8..128).
        label_encoder: ``FCOSLabelEncoder`` (default sizes of interest 64..512, radius 1.5).
        decoder: ``FCOSDecoder`` (default 0.05, top 1000, NMS 0.6, 100 detections).
        semantic_loss: add the auxiliary semantic-segmentation loss (default False).
        max_proposals: instance slots of the mask loss per replica batch (default 500).
        mask_threshold: mask probability threshold of ``predict_step`` (default 0.5).
        pixel_mean: RGB mean subtracted from the input (default ImageNet's 123.675, 116.28, 103.53).
        seed: seed of the proposal sampling.

    Call: ``model(images [B, H, W, 3], training=None)`` -> ``{"class_logits": [B, N, K],
    "box_regression": [B, N, 4] (l, t, r, b in strides), "centerness_logits": [B, N],
    "mask_params": [B, N, 169], "mask_features": [B, H/8, W/8, 8]}`` (and ``"semantic_logits"``
    ``[B, H/8, W/8, K]`` when training with ``semantic_loss``), ``N`` the FCOS locations.
    ``predict_step(images)`` -> detections with masks (module docstring).

    Example:

    >>> import numpy as np
    >>> from keras_cvx.heads import CondInstMaskBranch, FCOSHead
    >>> from keras_cvx.layers import FCOSDecoder
    >>> from keras_cvx.models import CondInst, FeaturePyramid
    >>> model = CondInst(3, image_size=64, backbone="resnet10", width_multiplier=0.125,
    ...                  neck=FeaturePyramid(16), head=FCOSHead(3, groups=4, return_box_features=True),
    ...                  mask_branch=CondInstMaskBranch(16), decoder=FCOSDecoder(max_detections=5))
    >>> out = model.predict_step(np.zeros((1, 64, 64, 3), "float32"))
    >>> tuple(out["masks"].shape), tuple(out["boxes"].shape)
    ((1, 5, 64, 64), (1, 5, 4))
    """

    xla_on_cpu = False
    """The ``Trainer``'s ``jit_compile="auto"`` trains without XLA on a CPU: XLA's steps run at
    0.80-0.91x on 2 AVX-512 cores (``benchmarks/condinst.py``)."""

    def __init__(self, num_classes, image_size=(800, 800), backbone="resnet50", width_multiplier=1.0, neck=None,
                 head=None, controller=None, mask_branch=None, mask_head=None, anchor_generator=None,
                 label_encoder=None, decoder=None, semantic_loss=False, max_proposals=500, mask_threshold=0.5,
                 pixel_mean=IMAGENET_MEAN, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = require_positive_int("num_classes", int(num_classes) if isinstance(
            num_classes, np.integer) else num_classes)
        self.image_size = detector_image_size(image_size)
        self.width_multiplier = require_positive("width_multiplier", width_multiplier)
        self.semantic_loss = bool(semantic_loss)
        self.max_proposals = require_positive_int("max_proposals", max_proposals)
        if not 0.0 < float(mask_threshold) < 1.0:
            raise ValueError(f"`mask_threshold` must be in (0, 1), got {mask_threshold!r}.")
        self.mask_threshold = float(mask_threshold)
        if len(pixel_mean) != 3:
            raise ValueError(f"`pixel_mean` must be 3 numbers (R, G, B), got {pixel_mean!r}.")
        self.pixel_mean = tuple(float(m) for m in pixel_mean)
        self.seed = seed

        height, width = self.image_size
        self.backbone, self._backbone_shapes = detector_backbone(backbone, self.image_size, self.width_multiplier,
                                                                 ("C3", "C4", "C5"))

        self.neck = deserialize_part(neck, FeaturePyramid)
        if (self.neck.min_level, self.neck.max_level) != (3, 7):
            raise ValueError(f"`neck` must give P3..P7, got P{self.neck.min_level}..P{self.neck.max_level}.")
        self.mask_head = deserialize_part(mask_head, DynamicMaskHead)
        self.head = deserialize_part(head, lambda: FCOSHead(self.num_classes, return_box_features=True))
        if not self.head.return_box_features or self.head.num_classes != self.num_classes:
            raise ValueError("`head` must be an FCOSHead with `num_classes` = the model's and return_box_features=True.")
        self.controller = deserialize_part(controller, lambda: CondInstController(self.mask_head.num_params))
        if self.controller.num_params != self.mask_head.num_params:
            raise ValueError(f"`controller` gives {self.controller.num_params} parameters per location; `mask_head` "
                             f"needs {self.mask_head.num_params}.")
        self.mask_branch = deserialize_part(mask_branch, CondInstMaskBranch)
        if self.mask_branch.out_channels != self.mask_head.mask_channels:
            raise ValueError(f"`mask_branch` gives {self.mask_branch.out_channels} channels; `mask_head` expects "
                             f"{self.mask_head.mask_channels}.")
        self.anchor_generator = deserialize_part(anchor_generator, FCOSLocations)
        self.label_encoder = deserialize_part(label_encoder, FCOSLabelEncoder)
        self.decoder = deserialize_part(decoder, FCOSDecoder)
        self.semantic_head = CondInstSemanticHead(self.num_classes, name="semantic_head") if self.semantic_loss else None
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.loss_trackers = [keras.metrics.Mean(name=name) for name in LOSS_NAMES[: 4 + self.semantic_loss]]

        self._pyramid_shapes = self.neck.compute_output_shape(self._backbone_shapes)
        level_shapes = [self._pyramid_shapes[f"P{l}"] for l in range(3, 8)]
        self.level_sizes = tuple(int(s[1] * s[2]) for s in level_shapes)
        locations, levels = self.anchor_generator(self.image_size, [s[1:3] for s in level_shapes])
        self.locations, self.levels = locations, levels
        self.location_strides = np.asarray(self.anchor_generator.strides, np.float32)[levels]
        self.mask_stride = self.mask_head.mask_out_stride
        self.build((None, height, width, 3))

    @property
    def num_locations(self):
        return int(self.locations.shape[0])

    def build(self, input_shape=None):
        """Builds every part from the static shapes (done by ``__init__``)."""
        if self.built:
            return
        pyramid = [self._pyramid_shapes[f"P{l}"] for l in range(3, 8)]
        parts = [(self.neck, self._backbone_shapes), (self.head, pyramid), (self.controller, pyramid),
                 (self.mask_branch, pyramid[:3]), (self.mask_head, self.mask_branch.compute_output_shape(pyramid[:3]))]
        if self.semantic_head is not None:
            parts.append((self.semantic_head, pyramid[0]))
        for part, shape in parts:
            if not part.built:  # parts deserialized from a config arrive built (their build_config)
                part.build(shape)
        self.built = True

    def fcos_outputs(self, images, training=None):
        """The FCOS part alone: ``(head outputs, [P3 ... P7])`` of the backbone, the FPN and
        the FCOS head (``class_logits``, ``box_regression``, ``centerness_logits`` and the box
        tower's ``box_features``); ``call`` adds the controller and the mask branch."""
        x = ops.cast(images, "float32") - np.asarray(self.pixel_mean, "float32")
        features = self.backbone(x, training=training)
        pyramid = self.neck({k: features[k] for k in ("C3", "C4", "C5")})
        levels = [pyramid[f"P{l}"] for l in range(3, 8)]
        return dict(self.head(levels)), levels

    def call(self, images, training=None):
        out, levels = self.fcos_outputs(images, training=training)
        out["mask_params"] = self.controller(out.pop("box_features"))
        out["mask_features"] = self.mask_branch(levels[:3], training=training)
        if training and self.semantic_head is not None:
            out["semantic_logits"] = self.semantic_head(levels[0], training=training)
        return out

    def compute_output_shape(self, input_shape):
        batch, n = input_shape[0], self.num_locations
        h8, w8 = self._pyramid_shapes["P3"][1:3]
        return {"class_logits": (batch, n, self.num_classes), "box_regression": (batch, n, 4),
                "centerness_logits": (batch, n), "mask_params": (batch, n, self.mask_head.num_params),
                "mask_features": (batch, h8, w8, self.mask_head.mask_channels)}

    # ------------------------------------------------------------------ training

    def assign_targets(self, y):
        """FCOS targets of the ground truth ``y`` (``FCOSLabelEncoder`` output) with the masks'
        centres of mass as sampling centres."""
        check_instance_targets(self, y)
        centers = mask_centers(y["masks"], y["boxes"], self.mask_stride)
        return self.label_encoder(y["boxes"], y["labels"], self.locations, self.levels, centers)

    def loss_normalizers(self, y):
        """Counts that normalise the FCOS losses, from the ground truth only:
        ``{"num_positives", "centerness_sum"}`` (float32). ``keras_cvx.training.Trainer`` sums
        them over the replicas and passes the sums back in ``y["loss_normalizers"]``."""
        return fcos_normalizers(self.assign_targets(y))

    def sample_instances(self, positive):
        """Up to ``max_proposals`` positives of the batch, uniformly at random: ``(flat_index
        [P] int32 into B x N, valid [P] bool)``. Static ``P = max_proposals``
        (``keras_cvx.ops.sample_subset``)."""
        return sample_subset(positive, self.max_proposals, self.seed_generator)

    def _mask_loss(self, y, y_pred, targets, image_weight):
        positive = targets["labels"] >= 0
        num = self.num_locations
        index, valid = self.sample_instances(positive)
        image = index // num
        location = index % num
        params = ops.take(ops.reshape(y_pred["mask_params"], (-1, self.mask_head.num_params)), index, axis=0)
        logits = self.mask_head(y_pred["mask_features"], params, ops.take(self.locations, location, axis=0),
                                ops.take(self.levels, location, axis=0), image)
        num_gt = y["masks"].shape[1]
        gt = ops.take(ops.reshape(y["masks"], (-1,) + tuple(y["masks"].shape[2:])),
                      image * num_gt + ops.maximum(ops.take(ops.reshape(targets["matched_gt"], (-1,)), index), 0),
                      axis=0)
        weight = ops.cast(valid, "float32") * ops.take(image_weight, image)
        losses = dice_loss(gt, logits, from_logits=True)
        mean = ops.sum(weight * losses) / ops.maximum(ops.sum(ops.cast(valid, "float32")), 1.0)
        return replica_share(mean)

    def semantic_targets(self, y):
        """One-hot ``[B, H/8, W/8, K]`` targets of the semantic loss: at each stride-8 centre the
        class of the smallest GT mask covering it (AdelaiDet ``MaskBranch``), zeros elsewhere."""
        masks = ops.cast(y["masks"], "float32")
        h8, w8 = self._pyramid_shapes["P3"][1:3]
        rows = [min((8 * i + 4) // self.mask_stride, masks.shape[2] - 1) for i in range(h8)]
        cols = [min((8 * j + 4) // self.mask_stride, masks.shape[3] - 1) for j in range(w8)]
        sampled = ops.take(ops.take(masks, np.asarray(rows, np.int32), axis=2), np.asarray(cols, np.int32), axis=3)
        labels = ops.cast(y["labels"], "int32")
        cover = (sampled > 0.5) & (labels >= 0)[:, :, None, None]
        area = ops.where(cover, ops.sum(masks, axis=(2, 3))[:, :, None, None], float("inf"))  # [B, M, h, w]
        # the first of the smallest (explicitly: argmin's choice among ties is not documented)
        instance = ops.arange(masks.shape[1], dtype="int32")[None, :, None, None]
        best = ops.min(ops.where(area == ops.min(area, axis=1, keepdims=True), instance, masks.shape[1]), axis=1)
        best = ops.minimum(best, masks.shape[1] - 1)  # [B, h, w]; uncovered centres are masked below
        classes = ops.take_along_axis(labels, ops.reshape(best, (-1, h8 * w8)), axis=1)
        one_hot = ops.one_hot(ops.maximum(classes, 0), self.num_classes)
        covered = ops.reshape(ops.any(cover, axis=1), (-1, h8 * w8, 1))
        return ops.reshape(one_hot * ops.cast(covered, "float32"), (-1, h8, w8, self.num_classes))

    def loss_terms(self, y, y_pred, sample_weight=None):
        """The loss terms (float32 scalars, each the replica's share): ``loss_cls``, ``loss_box``,
        ``loss_ctr``, ``loss_mask`` (and ``loss_sem``); ``sample_weight [B]`` weighs images."""
        targets = self.assign_targets(y)
        image_weight = ops.ones_like(ops.cast(targets["labels"][:, 0], "float32")) if sample_weight is None else (
            ops.cast(ops.reshape(sample_weight, (-1,)), "float32"))
        terms = fcos_loss_terms(targets, y_pred, y, image_weight)
        terms["loss_mask"] = self._mask_loss(y, y_pred, targets, image_weight)
        if self.semantic_loss and "semantic_logits" in y_pred:
            semantic = self.semantic_targets(y)
            focal = sigmoid_focal_loss(semantic, y_pred["semantic_logits"])
            total = ops.sum(ops.sum(focal, axis=(1, 2, 3)) * image_weight)
            terms["loss_sem"] = replica_share(total / ops.maximum(ops.sum(semantic), 1.0))
        return terms

    # ------------------------------------------------------------------ inference

    def fcos_detections(self, predictions):
        """FCOS detections (``boxes`` unclipped, ``scores``, ``classes``, ``num_detections``
        and the ``locations`` they come from, ``-1`` padding) of the head outputs."""
        distances = ops.cast(predictions["box_regression"], "float32") * self.location_strides[:, None]
        return dict(self.decoder(predictions["class_logits"], distances, predictions["centerness_logits"],
                                 self.locations, level_sizes=self.level_sizes))

    def decode(self, predictions):
        """Detections with full-image masks from the output of ``call`` (module docstring)."""
        detections = self.fcos_detections(predictions)
        index = detections.pop("locations")
        valid = index >= 0
        index = ops.maximum(index, 0)
        slots = index.shape[1]
        params = ops.take_along_axis(ops.cast(predictions["mask_params"], "float32"), index[..., None], axis=1)
        images = ops.zeros_like(index) + ops.arange(ops.shape(index)[0], dtype="int32")[:, None]
        flat = ops.reshape(index, (-1,))
        logits = self.mask_head(predictions["mask_features"], ops.reshape(params, (-1, self.mask_head.num_params)),
                                ops.take(self.locations, flat, axis=0), ops.take(self.levels, flat, axis=0),
                                ops.reshape(images, (-1,)))
        h4, w4 = logits.shape[1], logits.shape[2]
        probabilities = ops.transpose(ops.reshape(ops.sigmoid(logits), (-1, slots, h4, w4)), (0, 2, 3, 1))
        factor = self.image_size[0] // h4
        full = ops.transpose(aligned_bilinear(probabilities, factor, method="gather"), (0, 3, 1, 2))
        masks = (full > self.mask_threshold) & valid[:, :, None, None]
        detections["masks"] = ops.cast(masks, "uint8")
        detections["boxes"] = clip_boxes(detections["boxes"], self.image_size)
        return detections

    def get_config(self):
        config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        config.update(
            num_classes=self.num_classes, image_size=list(self.image_size),
            backbone=serialize(self.backbone), width_multiplier=self.width_multiplier,
            neck=serialize(self.neck), head=serialize(self.head), controller=serialize(self.controller),
            mask_branch=serialize(self.mask_branch), mask_head=serialize(self.mask_head),
            anchor_generator=serialize(self.anchor_generator), label_encoder=serialize(self.label_encoder),
            decoder=serialize(self.decoder), semantic_loss=self.semantic_loss, max_proposals=self.max_proposals,
            mask_threshold=self.mask_threshold, pixel_mean=list(self.pixel_mean), seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**copy.deepcopy(config))  # deserialization consumes the nested dicts
