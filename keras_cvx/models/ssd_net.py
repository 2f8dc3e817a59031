"""SSD-NET (NETNet) and plain SSD: a single-shot detector composed of a backbone, SSD's extra
blocks, NETNet's modules, an SSD head, an anchor generator, a label encoder and a decoder.

Paper: "Neighbor Erasing and Transferring Network for Better Single Shot Object Detection",
Y. Li, Y. Pang, J. Shen, J. Cao, L. Shao, CVPR 2020, arXiv 2001.06690 (Sec. 3, Fig. 2 wiring;
Sec. 4 SSD settings); SSD: "SSD: Single Shot MultiBox Detector", W. Liu et al., arXiv 1512.02325.

Forward (``net_modules=True``; ``net_modules=False`` is plain SSD: the head sits on
p_1..p_L directly)::

    x = images - pixel_mean                             RGB [B, S, S, 3] in 0..255 -> float
    c, p_1..p_L = backbone(x) (+ SSD extra blocks)       c: shallower neighbour of p_1 (VGG conv3_3)
    q_s = NNFM_s(p_s, shallower=p_{s-1} (p_0 = c), deeper=p_{s+1})    s = 1..fusion_levels
    for each NETM pair (s, d) (default (1, 3) and (2, 4)):
        q̃_s, e_s = NEM(q_s, q_d)            gate from q_d before q_d receives any transfer
        q̃_d = NTM(e_s, q_d)                 q_d + T(e_s)
    head on [q̃_1, q̃_2, q̃_3, q̃_4, p_5, p_6 (, p_7)] -> box_regression [B, N, 4],
                                                        class_logits [B, N, num_classes + 1]

The parts (each a constructor argument, serialised in the config):

* ``anchor_generator`` (default ``SSDAnchorGenerator()``): SSD300/512's COCO anchors when the
  pyramid has their feature sizes, otherwise the SSD paper's scale rule.
* ``label_encoder`` (default ``SSDLabelEncoder()``): SSD matching (IoU >= 0.5 plus each
  ground truth's best anchor) and SSD box coding; the loss is ``MultiBoxLoss`` (softmax CE
  with 3:1 hard-negative mining + smooth-L1), divided by the positives of the global batch
  under ``keras_cvx.training.Trainer`` (``loss_normalizers``).
* ``decoder`` (default ``SSDDecoder()``): softmax, decoding, per-class top-400, class-aware NMS
  0.45, 100 detections.

Backbones and the pyramid (``backbone``):

- ``"vgg16"``: ``VGG16SSD`` (conv3_3, p1 = L2-normalised conv4_3 ... p6, p7 at 512),
  ``width_multiplier`` its width multiplier.
- ``"resnet50"`` (or ``"resnet10"``, ``"resnet18"``, ``"resnet34"``, ``"resnet101"``):
  ``ResNet(depth)`` C2..C5 with ``base_width`` 64 times ``width_multiplier``; C2 is the
  shallower neighbour, levels are C3, C4, C5 followed by SSD extra blocks (NETNet gives no
  ResNet pyramid; this one is ours). At 300: 38, 19, 10 + 5, 3, 1; at 512: 64, 32, 16 + 8, 4, 2, 1.
- a feature model (a ``Backbone`` or any Functional model; list or dict outputs, input
  ``(S, S, 3)``, mean-subtracted float): its outputs are sorted by spatial size, largest first
  (ties keep their output order); the first is the shallower neighbour of level 1 (used by
  NNFM only), the others are levels 1, 2, ... .

SSD extra blocks (rows of VGG16-SSD's extra layers, ``backbones.vgg.SSD_EXTRAS``: 1×1 conv +
ReLU, zero padding, 3×3 (or 4×4) conv + ReLU; widths times ``width_multiplier``) are appended
to the deepest map: when ``image_size`` is 300 or 512 and the backbone's levels are SSD's
leading feature sizes, the last rows that complete SSD's 6 / 7 levels; otherwise (our choice,
for small models) 3×3/2 pad 1 blocks (3×3 'valid' from 3×3) until the deepest map is 1×1
(none when it already is).

Defaults where the paper is silent (constructor arguments): NNFM width 256
(``fusion_channels``), NNFM on the first 4 levels (``fusion_levels``), NETM pairs
((1, 3), (2, 4)) (``netm_pairs``), NEM gate ``"conv"`` (``nem_gate``), NTM average pooling
(``ntm_pool``), NNFM max pooling (``nnfm_pool``); with several NETM pairs every gate is
computed before any transfer is added. Input preprocessing is inside the model: RGB in
0..255 minus ``pixel_mean`` (SSD's BGR (104, 117, 123) in RGB order), no scaling. Anchors are
not clipped by default (Caffe SSD; ``SSDAnchorGenerator(clip="center_size")`` gives the
PyTorch ports' anchors). ``compute_loss``'s ``sample_weight`` ``[B]`` weighs the images'
loss terms (``MultiBoxLoss``).
"""

import copy

import keras
import numpy as np
from keras import ops

from keras_cvx.heads.ssd import SSDHead
from keras_cvx.layers.neighbor_erasing import GATES, NeighborErasing
from keras_cvx.layers.neighbor_transferring import POOL_TYPES, NeighborTransferring
from keras_cvx.layers.nn_fusion import NearestNeighborFusion
from keras_cvx.layers.ssd_decoder import SSDDecoder
from keras_cvx.losses.multibox import MultiBoxLoss
from keras_cvx.losses.replicas import LOSS_NORMALIZERS
from keras_cvx.models.anchor_generators.ssd import SSDAnchorGenerator
from keras_cvx.models.backbones.resnet import ResNet
from keras_cvx.models.backbones.vgg import SSD_EXTRAS, VGG16SSD, scaled_channels
from keras_cvx.models.label_encoders.ssd import SSDLabelEncoder
from keras_cvx.ops.anchors import SSD_CONFIGS
from keras_cvx.ops.boxes import clip_boxes
from keras_cvx.validation import check_labels, require_choice, require_positive, require_positive_int
from keras_cvx.models.detector_parts import Detector

RESNET_BACKBONES = {"resnet10": 10, "resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}
BACKBONES = ("vgg16",) + tuple(RESNET_BACKBONES)
SSD_PIXEL_MEAN = (123.0, 117.0, 104.0)
"""SSD's BGR mean (104, 117, 123) in RGB order."""


def make_backbone(backbone, image_size, width_multiplier):
    """The backbone model for a name of ``BACKBONES``, a model, or a serialized model."""
    if isinstance(backbone, dict):
        return keras.saving.deserialize_keras_object(backbone)
    if backbone == "vgg16":
        return VGG16SSD(image_size=image_size, width_multiplier=width_multiplier)
    if isinstance(backbone, str) and backbone in RESNET_BACKBONES:
        return ResNet(depth=RESNET_BACKBONES[backbone], include_top=False, input_shape=(image_size, image_size, 3),
                      base_width=scaled_channels(64, width_multiplier))
    if isinstance(backbone, keras.Model):
        return backbone
    raise ValueError(f"`backbone` must be one of {list(BACKBONES)} or a Functional keras.Model, got {backbone!r}.")


def _part(value, default, name):
    """A detector part: ``default`` for None, deserialized from a config dict, or as given."""
    if value is None:
        return default
    if isinstance(value, dict):
        return keras.saving.deserialize_keras_object(value)
    if not callable(value):
        raise ValueError(f"`{name}` must be a callable {type(default).__name__}-like object, got {value!r}.")
    return value


def _ordered_outputs(backbone):
    """Output keys (dict outputs) or indices (list outputs) sorted by spatial size, largest
    first, and the matching shapes."""
    outputs = backbone.output
    if isinstance(outputs, dict):
        keys = list(outputs)
    elif isinstance(outputs, (list, tuple)):
        keys = list(range(len(outputs)))
    else:
        keys = []
    shapes = {k: tuple(outputs[k].shape) for k in keys}
    if len(keys) < 2 or any(len(s) != 4 or None in s[1:] for s in shapes.values()):
        raise ValueError(
            "`backbone` must return a list or dict of at least two (B, H, W, C) maps with static "
            f"sizes (a shallower neighbour and the pyramid levels), got {backbone.output!r}."
        )
    keys = sorted(keys, key=lambda k: -shapes[k][1] * shapes[k][2])
    return keys, [shapes[k] for k in keys]


def _ssd_extra_rows(image_size, sizes):
    """The last rows of VGG16-SSD's extras that complete ``sizes`` to SSD's feature sizes, or
    None when ``sizes`` are not SSD's leading sizes."""
    target, rows = SSD_CONFIGS[image_size]["feature_sizes"], SSD_EXTRAS[image_size]
    missing = len(target) - len(sizes)
    if not 0 <= missing <= len(rows) or list(target[: len(sizes)]) != list(sizes):
        return None
    return rows[len(rows) - missing:]


def _generic_extra_rows(size):
    """Extra layers (VGG16-SSD300's rows) halving ``size`` until 1×1: 3×3/2 pad 1, and 3×3
    'valid' from 3×3."""
    rows = []
    while size > 1:
        first = SSD_EXTRAS[300][0] if not rows else SSD_EXTRAS[300][1]
        rows.append(SSD_EXTRAS[300][-1] if size == 3 else first)
        size = 1 if size == 3 else (size + 1) // 2
    return rows


@keras.saving.register_keras_serializable(package="keras_cvx")
class SSDNet(Detector):
    """SSD-NET (NETNet) or plain SSD for ``num_classes`` object classes (see the module docstring).

    Args:
        num_classes: object classes; the head adds the background logit (index 0).
        image_size: square input size S (300 and 512 use the SSD COCO anchors).
        backbone: ``"vgg16"``, ``"resnet10"``/``"resnet18"``/``"resnet34"``/``"resnet50"``/
            ``"resnet101"``, or a feature model (see the module docstring).
        net_modules: True for NETNet (NNFM + NETMs), False for plain SSD.
        width_multiplier: width of VGG16 / of ResNet's base width 64, and of the SSD extra
            blocks (channels at least 8) for the named backbones.
        fusion_channels: NNFM output channels.
        anchor_generator: an ``SSDAnchorGenerator``-like object, or None for ``SSDAnchorGenerator()``.
        label_encoder: an ``SSDLabelEncoder``-like object, or None for ``SSDLabelEncoder()``.
        decoder: a decoder layer (``SSDDecoder`` interface) or None for ``SSDDecoder()``.
        fusion_levels: NNFM is applied to levels 1..fusion_levels (0: none).
        netm_pairs: 1-based (shallow, deep) level pairs joined by NEM + NTM.
        nem_gate: NEM gate function (``"conv"``, ``"max"``, ``"mean"``).
        ntm_pool: NTM down-sampling (``"avg"``, ``"max"``).
        nnfm_pool: NNFM down-sampling of the shallower neighbour (``"max"``, ``"avg"``).
        negative_positive_ratio: hard-negative mining ratio of ``MultiBoxLoss`` (3).
        localization_weight: α of ``MultiBoxLoss`` (1).
        pixel_mean: RGB mean subtracted from the input.

    Call: ``model(images [B, S, S, 3])`` -> ``{"box_regression": [B, N, 4], "class_logits":
    [B, N, num_classes + 1]}``. ``predict_step(images)`` -> padded detections ``boxes``
    ``[B, D, 4]`` (``xyxy`` pixels), ``scores`` ``[B, D]``, ``classes`` ``[B, D]``,
    ``num_detections`` ``[B]``.

    Example:

    ```python
    import numpy as np
    from keras_cvx.models import SSDNet

    model = SSDNet(num_classes=3, image_size=64, backbone="resnet10", width_multiplier=0.125,
                   fusion_channels=16)
    outputs = model(np.zeros((1, 64, 64, 3), "float32"))
    assert outputs["class_logits"].shape == (1, model.num_anchors, 4)
    targets = {"boxes": np.array([[[8.0, 8.0, 40.0, 48.0]]], "float32"), "labels": np.array([[2]], "int32")}
    loss = model.compute_loss(np.zeros((1, 64, 64, 3), "float32"), targets, outputs)
    ```
    """

    xla_on_cpu = False
    """The ``Trainer``'s ``jit_compile="auto"`` trains without XLA on a CPU: SSD300's step at batch 2
    took 1.69-2.19 s without XLA and 2.24-2.74 s with it in separate runs on 2 AVX-512 cores, and
    2.92 s vs 2.96 s in one interleaved ``benchmarks/ssd_net.py`` run: never slower without."""

    def __init__(
        self,
        num_classes,
        image_size=300,
        backbone="vgg16",
        net_modules=True,
        width_multiplier=1.0,
        fusion_channels=256,
        anchor_generator=None,
        label_encoder=None,
        decoder=None,
        fusion_levels=4,
        netm_pairs=((1, 3), (2, 4)),
        nem_gate="conv",
        ntm_pool="avg",
        nnfm_pool="max",
        negative_positive_ratio=3.0,
        localization_weight=1.0,
        pixel_mean=SSD_PIXEL_MEAN,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = require_positive_int("num_classes", num_classes)
        self.image_size = require_positive_int("image_size", image_size)
        self.width_multiplier = require_positive("width_multiplier", width_multiplier)
        self.net_modules = bool(net_modules)
        self.fusion_channels = require_positive_int("fusion_channels", fusion_channels)
        if isinstance(fusion_levels, bool) or not isinstance(fusion_levels, (int, np.integer)) or fusion_levels < 0:
            raise ValueError(f"`fusion_levels` must be a non-negative integer, got {fusion_levels!r}.")
        self.fusion_levels = int(fusion_levels)
        self.netm_pairs = tuple((int(s), int(d)) for s, d in netm_pairs)
        self.nem_gate = require_choice("nem_gate", nem_gate, GATES)
        self.ntm_pool = require_choice("ntm_pool", ntm_pool, POOL_TYPES)
        self.nnfm_pool = require_choice("nnfm_pool", nnfm_pool, POOL_TYPES)
        if len(pixel_mean) != 3:
            raise ValueError(f"`pixel_mean` must be 3 numbers (R, G, B), got {pixel_mean!r}.")
        self.pixel_mean = tuple(float(m) for m in pixel_mean)
        self.anchor_generator = _part(anchor_generator, SSDAnchorGenerator(), "anchor_generator")
        self.label_encoder = _part(label_encoder, SSDLabelEncoder(), "label_encoder")
        self.decoder = _part(decoder, SSDDecoder(), "decoder")

        if isinstance(backbone, str):
            require_choice("backbone", backbone, BACKBONES)
        self.backbone = make_backbone(backbone, self.image_size, self.width_multiplier)
        self._output_keys, shapes = _ordered_outputs(self.backbone)
        self._shallow_shape, level_shapes = shapes[0], list(shapes[1:])

        sizes = [s[1] for s in level_shapes]
        rows = _ssd_extra_rows(self.image_size, sizes) if self.image_size in SSD_CONFIGS else None
        if rows is None:
            rows = _generic_extra_rows(sizes[-1])
        self.extra_blocks, self._extra_input_shapes = [], []
        for reduced, channels, kernel, stride, padding in rows:
            block = keras.Sequential(name=f"extra{len(self.extra_blocks) + 1}")
            block.add(keras.layers.Conv2D(scaled_channels(reduced, self.width_multiplier), 1, activation="relu"))
            if padding:
                block.add(keras.layers.ZeroPadding2D(padding))
            block.add(keras.layers.Conv2D(scaled_channels(channels, self.width_multiplier), kernel, strides=stride,
                                          activation="relu"))
            self.extra_blocks.append(block)
            self._extra_input_shapes.append(level_shapes[-1])
            level_shapes.append(block.compute_output_shape(level_shapes[-1]))
        self._level_shapes = level_shapes
        self.num_levels = len(level_shapes)
        self.feature_sizes = tuple(s[1] for s in level_shapes)
        self.anchors = self.anchor_generator(self.image_size, self.feature_sizes)
        anchors_per_location = self.anchor_generator.anchors_per_location(self.image_size, self.feature_sizes)

        self.fusions, self.erasers, self.transfers = [], [], []
        if self.net_modules:
            if self.fusion_levels > self.num_levels:
                raise ValueError(
                    f"`fusion_levels` ({self.fusion_levels}) exceeds the {self.num_levels} pyramid levels."
                )
            for s, d in self.netm_pairs:
                if not 1 <= s < d <= self.num_levels:
                    raise ValueError(
                        f"`netm_pairs` must hold (shallow, deep) levels with 1 <= shallow < deep <= "
                        f"{self.num_levels}, got {netm_pairs!r}."
                    )
            self.fusions = [
                NearestNeighborFusion(self.fusion_channels, pool_type=self.nnfm_pool, name=f"nnfm{s + 1}")
                for s in range(self.fusion_levels)
            ]
            self.erasers = [NeighborErasing(gate=self.nem_gate, name=f"nem{s}_{d}") for s, d in self.netm_pairs]
            self.transfers = [NeighborTransferring(pool_type=self.ntm_pool, name=f"ntm{s}_{d}")
                              for s, d in self.netm_pairs]
        self.head = SSDHead(self.num_classes, anchors_per_location=anchors_per_location, name="head")
        self.multibox_loss = MultiBoxLoss(negative_positive_ratio=negative_positive_ratio,
                                          localization_weight=localization_weight)
        self.negative_positive_ratio = float(negative_positive_ratio)
        self.localization_weight = float(localization_weight)
        self.build((None, self.image_size, self.image_size, 3))

    @property
    def num_anchors(self):
        return int(self.anchors.shape[0])

    def build(self, input_shape=None):
        """Builds every sub-layer from the static feature shapes (done by ``__init__``; the input
        size is fixed)."""
        if self.built:
            return
        level_shapes = self._level_shapes
        for block, shape in zip(self.extra_blocks, self._extra_input_shapes):
            block.build(shape)
        fused = list(level_shapes)
        neighbours = [self._shallow_shape] + level_shapes
        for s, fusion in enumerate(self.fusions):
            deeper = level_shapes[s + 1] if s + 1 < self.num_levels else None
            fusion.build(level_shapes[s], neighbours[s], deeper)
            fused[s] = fusion.compute_output_shape(level_shapes[s])
        for (s, d), eraser, transfer in zip(self.netm_pairs, self.erasers, self.transfers):
            eraser.build(fused[s - 1], fused[d - 1])
            transfer.build(fused[s - 1], fused[d - 1])
        self.head.build(fused)
        self.built = True

    def features(self, images, training=None):
        """The pyramid the head sees: ``num_levels`` maps (after NNFM/NETM when enabled)."""
        x = ops.cast(images, "float32") - np.asarray(self.pixel_mean, "float32")
        outputs = self.backbone(x, training=training)
        maps = [outputs[k] for k in self._output_keys]
        shallow, levels = maps[0], maps[1:]
        for block in self.extra_blocks:
            levels.append(block(levels[-1]))
        if not self.net_modules:
            return levels
        neighbours = [shallow] + levels
        fused = list(levels)
        for s, fusion in enumerate(self.fusions):
            if s + 1 < self.num_levels:
                fused[s] = fusion(levels[s], shallower=neighbours[s], deeper=levels[s + 1])
            else:
                fused[s] = fusion(levels[s], shallower=neighbours[s])
        erased = [eraser(fused[s - 1], fused[d - 1]) for (s, d), eraser in zip(self.netm_pairs, self.erasers)]
        for (s, d), (kept, removed), transfer in zip(self.netm_pairs, erased, self.transfers):
            fused[s - 1] = kept
            fused[d - 1] = transfer(removed, fused[d - 1])
        return fused

    def call(self, images, training=None):
        return self.head(self.features(images, training=training))

    def compute_output_shape(self, input_shape):
        batch = input_shape[0]
        return {
            "box_regression": (batch, self.num_anchors, 4),
            "class_logits": (batch, self.num_anchors, self.num_classes + 1),
        }

    def assign_targets(self, boxes, labels):
        """The label encoder's targets for padded ground truth (``boxes [B, M, 4]`` ``xyxy``
        pixels, ``labels [B, M]`` 0-based, -1 padding): ``{"box_targets": [B, N, 4],
        "class_targets": [B, N]}`` (label + 1, 0 background)."""
        check_labels(labels, self.num_classes)
        return self.label_encoder(boxes, labels, self.anchors)

    def loss_normalizers(self, y):
        """The counts that normalise the loss, for this batch: ``{"num_positives": float32}``,
        the anchors matched to a ground truth. ``keras_cvx.training.Trainer`` sums them over the
        replicas and passes the sums back in ``y["loss_normalizers"]`` (see
        ``keras_cvx.losses.replicas``)."""
        positives = self.assign_targets(y["boxes"], y["labels"])["class_targets"] > 0
        return {"num_positives": ops.sum(ops.cast(positives, "float32"))}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """``MultiBoxLoss`` of ``y_pred`` against the targets assigned to ``y`` (the data target
        contract: ``boxes``, ``labels``, and the optional ``loss_normalizers`` of the Trainer;
        other keys are ignored); ``sample_weight`` ``[B]`` weighs images. Under a
        ``tf.distribute`` strategy this is the replica's share of the global-batch loss."""
        if y_pred is None:
            y_pred = self(x, training=training)
        targets = self.assign_targets(y["boxes"], y["labels"])
        if LOSS_NORMALIZERS in y:
            targets[LOSS_NORMALIZERS] = y[LOSS_NORMALIZERS]
        return self.multibox_loss(targets, y_pred, sample_weight=sample_weight)

    def decode(self, predictions):
        """Padded detections (``boxes`` clipped to the image, ``scores``, ``classes``,
        ``num_detections``) from the output of ``call``, by ``self.decoder``."""
        detections = dict(self.decoder(predictions["box_regression"], predictions["class_logits"], self.anchors))
        detections["boxes"] = clip_boxes(detections["boxes"], (self.image_size, self.image_size))
        return detections

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            image_size=self.image_size,
            backbone=keras.saving.serialize_keras_object(self.backbone),
            net_modules=self.net_modules,
            width_multiplier=self.width_multiplier,
            fusion_channels=self.fusion_channels,
            anchor_generator=keras.saving.serialize_keras_object(self.anchor_generator),
            label_encoder=keras.saving.serialize_keras_object(self.label_encoder),
            decoder=keras.saving.serialize_keras_object(self.decoder),
            fusion_levels=self.fusion_levels,
            netm_pairs=[list(p) for p in self.netm_pairs],
            nem_gate=self.nem_gate,
            ntm_pool=self.ntm_pool,
            nnfm_pool=self.nnfm_pool,
            negative_positive_ratio=self.negative_positive_ratio,
            localization_weight=self.localization_weight,
            pixel_mean=list(self.pixel_mean),
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**copy.deepcopy(config))  # deserialization consumes the nested dicts
