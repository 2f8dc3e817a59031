"""TSD: the task-aware spatial disentanglement RoI head.

Paper: "Revisiting the Sibling Head in Object Detector", G. Song, Y. Liu, X. Wang, CVPR 2020,
arXiv 2003.07540, Sec. 3 (eqs. 2-6), as the official code computes it (Sense-X/TSD,
``TSDSharedFCBBoxHead``, ``DeltaCPooling``/``DeltaRPooling``, ``bbox_target_single_tsd``).

From the RoIAlign feature ``F`` of a proposal ``P`` (``k x k x C``, k = 7), TSD predicts two
task-specific proposals, re-pools the FPN level of ``P`` at them and classifies / regresses
from two separate fc branches::

    h        = ReLU(Dense_{256}(flatten(F)))                            shared first layer of F_c, F_r
    ΔC       = Dense_{2 k k}(ReLU(Dense_{256}(h)))  -> [B, R, k, k, 2]  per-bin offsets (eq. 5)
    ΔR       = Dense_{2}(ReLU(Dense_{256}(h)))      -> [B, R, 2]        one offset per RoI (eq. 3)
    F̂_c      = deformable pooling of P with ΔC, F̂_r = the same with ΔR for every bin   (eq. 6)
    P̂_r      = P + γ (dx w, dy h, dx w, dy h),  w = x2 - x1 + 1, h = y2 - y1 + 1         (eqs. 3-4)
    cls      = Dense_{n}(ReLU(Dense_{1024}(ReLU(Dense_{1024}(flatten(F̂_c))))))    H^D_1 (eq. 2)
    deltas   = Dense_{4n}(ReLU(Dense_{1024}(ReLU(Dense_{1024}(flatten(F̂_r))))))   H^D_2, relative to P̂_r

The offsets are unbounded (no tanh) and in units of ``γ`` times the RoI size: the pooling
moves the samples of a bin by ``γ dx`` RoI widths, the same ``γ = 0.1`` as the shift of P̂_r
(``trans_std`` and the hard-coded 0.1 of the official code). The pooling is
``keras_cvx.ops.multilevel_deformable_roi_pool`` (mmdet v1 geometry), on the level of ``P``.
The box deltas of the TSD branch are relative to P̂_r (decode them with ``shifted_proposals``),
the sibling head's relative to ``P``. P̂_r is not detached: the TSD regression target
``encode(P̂_r -> GT)`` and the progressive constraint on ``IoU(decode(P̂_r, deltas), GT)``
back-propagate into ΔR, as in the official code.

ΔC layout: the 2k² outputs of ``delta_c`` are ordered as the reference's ``(N, 2, k, k)``:
output ``a k² + ph k + pw`` is the x offset (``a = 0``) or the y offset (``a = 1``) of bin
(row ``ph``, column ``pw``). It is reshaped to ``[B, R, 2, k, k]`` and transposed to the
package's channels-last ``[B, R, k, k, 2]`` (``(x, y)`` last), so the weights of the
reference's last ``delta_c`` layer port without reordering its outputs.

The sibling head (``SiblingBoxHead``, ``H_1``/``H_2`` of eq. 1) is kept for training (its
losses and the progressive constraint, eqs. 7-8) and not evaluated at inference.

Initialisation (official code): the offset nets and the hidden layers of both branches
N(0, 1/fan_in) (``kaiming_normal_(a=1)``), zero bias -- the offset nets are *not*
zero-initialised; the two output layers of the branches keep PyTorch's default ``nn.Linear``
init, U(±1/sqrt(fan_in)) for weight and bias. Our extension: with a "sigmoid", "eql" or "eqlv2"
classifier the class output bias is the prior ``-log((1 - π) / π)``, as in the sibling head.

Parameters for K = 80 (softmax), 7x7x256 features: offset nets 3,368,804; TSD branches
28,206,485; the whole head with its sibling head 45,886,094; used at inference 31,575,289.

Differences from the reference implementation: background is the last class (mmdet v1:
first); RoIs are a padded batch ``[B, R, ...]``; features are flattened in NHWC order (porting
PyTorch weights to ``shared_fc`` and to the first layer of each branch needs the row
permutation of ``keras_cvx.heads.roi_box``).
"""

import functools
import math

import keras
from keras import ops

from keras_cvx.heads.fcos import check_levels
from keras_cvx.heads.roi_box import (
    SiblingBoxHead,
    build_chain,
    check_roi_shape,
    flatten_rois,
    hidden_layers,
    kaiming_fan_in,
    prior_bias,
    require_non_negative_int,
    run_hidden,
    split_deltas,
    set_classifier_arguments,
    torch_linear_default,
)
from keras_cvx.ops.deformable_roi_pool import multilevel_deformable_roi_pool
from keras_cvx.validation import require_positive, require_positive_int

FLOAT32_OUTPUTS = ("class_offsets", "region_offsets", "shifted_proposals")
"""Outputs kept in float32 under mixed precision (offsets and boxes)."""


def shift_proposals(proposals, region_offsets, gamma=0.1):
    """TSD's localization proposal ``P̂_r = P + ΔR`` (arXiv 2003.07540, eqs. 3-4).

    With mmdet v1's "+1" sizes ``w = x2 - x1 + 1``, ``h = y2 - y1 + 1`` (the geometry of the
    deformable pooling)::

        x1' = x1 + γ dx w,  x2' = x2 + γ dx w,  y1' = y1 + γ dy h,  y2' = y2 + γ dy h

    Differentiable with respect to ``region_offsets`` (not detached, as in the official code).

    Args:
        proposals: ``[..., 4]`` ``xyxy`` boxes ``P`` in pixels.
        region_offsets: ``[..., 2]`` ``(dx, dy)`` (ΔR before the scale ``γ``).
        gamma: the scale ``γ`` (default 0.1).

    Returns: float32 ``[..., 4]``.

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.heads.tsd import shift_proposals
    >>> boxes = np.array([[10, 20, 29, 59]], "float32")          # w = 20, h = 40
    >>> keras.ops.convert_to_numpy(shift_proposals(boxes, np.array([[1.0, -0.5]], "float32"))).tolist()
    [[12.0, 18.0, 31.0, 57.0]]
    """
    proposals = ops.cast(proposals, "float32")
    region_offsets = ops.cast(region_offsets, "float32")
    shift_x = gamma * region_offsets[..., 0] * (proposals[..., 2] - proposals[..., 0] + 1.0)
    shift_y = gamma * region_offsets[..., 1] * (proposals[..., 3] - proposals[..., 1] + 1.0)
    return proposals + ops.stack([shift_x, shift_y, shift_x, shift_y], axis=-1)


@keras.saving.register_keras_serializable(package="keras_cvx")
class TSDHead(keras.layers.Layer):
    """TSD RoI head: task-aware offsets, task-aware pooling, separate classification and
    localization branches, and the sibling head for training (arXiv 2003.07540 Sec. 3; module
    docstring).

    Args:
        num_classes: object classes ``K`` (labels ``0..K-1``, background ``K``).
        classification_loss: "softmax" (default), "sigmoid", "eql" or "eqlv2", as
            ``SiblingBoxHead`` (``n = K + 1`` outputs for "softmax"/"eqlv2", ``K`` otherwise).
        hidden_units: width of the hidden fc layers of both branches and of the sibling head
            (default 1024).
        offset_units: width of the offset nets' hidden layers (default 256).
        output_size: ``k``, bins per side of the task-aware pooling and of ΔC (default 7).
        sampling_ratio: samples per bin and axis of the pooling (default 4).
        gamma: ``γ`` of eqs. 3 and 5: offset scale of the pooling and of P̂_r (default 0.1).
        min_level: level of the first pyramid map (default 2: P2).
        prior_probability: ``π`` of the class bias for "sigmoid"/"eql"/"eqlv2" (default 0.001).

    Call: ``head(roi_features, pyramid, proposals, levels=None, training=None)`` with
    ``roi_features`` ``[B, R, h, w, C]`` (RoIAlign of the proposals), ``pyramid`` the list of
    FPN maps ``[B, H_l, W_l, C]`` from ``min_level`` on, ``proposals`` ``[B, R, 4]`` ``xyxy``
    pixels, ``levels`` int32 ``[B, R]`` absolute levels (pass those of the RoIAlign; None:
    mmdet v1's rule ``keras_cvx.ops.mmdet_roi_level``). Returns a dict:

    * ``class_logits`` ``[B, R, n]`` and ``box_deltas`` ``[B, R, n, 4]`` (relative to
      ``shifted_proposals``): the TSD branches, what inference uses;
    * ``shifted_proposals`` ``[B, R, 4]`` (P̂_r), ``region_offsets`` ``[B, R, 2]`` (ΔR's
      ``(dx, dy)``) and ``class_offsets`` ``[B, R, k, k, 2]`` (ΔC, ``(x, y)`` last), float32;
    * only when ``training`` is true: ``sibling_class_logits`` ``[B, R, n]`` and
      ``sibling_box_deltas`` ``[B, R, n, 4]`` (relative to ``proposals``).

    At inference the sibling head is not evaluated; ``count_inference_params()`` counts the
    weights that are (offset nets and branches). The outputs of a Functional model are fixed
    when it is built (without ``training``: the inference outputs); a detector that trains the
    sibling head calls the head from a subclassed model's ``compute_loss``/``call`` with
    ``training=True``.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.heads.tsd import TSDHead
    >>> head = TSDHead(num_classes=3, hidden_units=8, offset_units=4, output_size=2)
    >>> pyramid = [np.ones((1, 16 >> l, 16 >> l, 2), "float32") for l in range(2)]
    >>> proposals = np.array([[[0, 0, 20, 30], [8, 8, 60, 60]]], "float32")
    >>> out = head(np.ones((1, 2, 2, 2, 2), "float32"), pyramid, proposals, np.array([[2, 3]], "int32"))
    >>> sorted(out), tuple(out["box_deltas"].shape)
    (['box_deltas', 'class_logits', 'class_offsets', 'region_offsets', 'shifted_proposals'], (1, 2, 4, 4))

    Differences from the reference implementation: background last; padded ``[B, R]``
    batches; NHWC flatten order; the class-output prior for sigmoid classifiers (module
    docstring).
    """

    def __init__(self, num_classes, classification_loss="softmax", hidden_units=1024, offset_units=256,
                 output_size=7, sampling_ratio=4, gamma=0.1, min_level=2, prior_probability=0.001, **kwargs):
        # Proposals stay float32 under mixed precision: inputs are not cast to the compute dtype.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        set_classifier_arguments(self, num_classes, classification_loss, hidden_units, prior_probability)
        self.offset_units = require_positive_int("offset_units", offset_units)
        self.output_size = require_positive_int("output_size", output_size)
        self.sampling_ratio = require_positive_int("sampling_ratio", sampling_ratio)
        self.gamma = require_positive("gamma", gamma)
        self.min_level = require_non_negative_int("min_level", min_level)
        policy = self.dtype_policy

        def dense(units, name, initializers=None):
            kernel, bias = initializers or (kaiming_fan_in(), "zeros")
            return keras.layers.Dense(units, kernel_initializer=kernel, bias_initializer=bias, dtype=policy,
                                      name=name)

        # Offset nets F_c, F_r (eqs. 3, 5) with their shared first layer.
        self.shared_fc = dense(self.offset_units, "shared_fc")
        self.delta_c_fc = dense(self.offset_units, "delta_c_fc")
        self.delta_c = dense(2 * self.output_size**2, "delta_c")
        self.delta_r_fc = dense(self.offset_units, "delta_r_fc")
        self.delta_r = dense(2, "delta_r")
        # TSD branches H^D_1, H^D_2 (eq. 2).
        self.cls_fcs = hidden_layers(self.hidden_units, 2, "tsd_cls_fc", policy)
        self.reg_fcs = hidden_layers(self.hidden_units, 2, "tsd_reg_fc", policy)
        kernel, bias = torch_linear_default(self.hidden_units)
        if self.classification_loss != "softmax":
            bias = keras.initializers.Constant(prior_bias(self.prior_probability))
        self.tsd_cls_score = dense(self.num_outputs, "tsd_cls_score", (kernel, bias))
        self.tsd_bbox_pred = dense(4 * self.num_outputs, "tsd_bbox_pred", torch_linear_default(self.hidden_units))
        # The sibling head H_1, H_2 (eq. 1), training only.
        self.sibling = SiblingBoxHead(self.num_classes, self.classification_loss, self.hidden_units, 2,
                                      self.prior_probability, dtype=policy, name="sibling")

    @property
    def _offset_layers(self):
        return [self.shared_fc, self.delta_c_fc, self.delta_c, self.delta_r_fc, self.delta_r]

    @property
    def _branch_layers(self):
        return self.cls_fcs + [self.tsd_cls_score] + self.reg_fcs + [self.tsd_bbox_pred]

    @property
    def inference_weights(self):
        """The weights evaluated at inference: offset nets and TSD branches (not the sibling head)."""
        return [w for layer in self._offset_layers + self._branch_layers for w in layer.weights]

    def count_inference_params(self):
        """Number of parameters used at inference (31,575,289 for K = 80, softmax, 7x7x256)."""
        return sum(math.prod(w.shape) for w in self.inference_weights)

    def _check_shapes(self, roi_features_shape, pyramid_shape, proposals_shape):
        flat = check_roi_shape(roi_features_shape)
        check_levels(pyramid_shape, len(pyramid_shape), "pyramid")
        channels = {int(s[-1]) for s in pyramid_shape}
        if len(channels) != 1:
            raise ValueError(f"every map of `pyramid` must have the same channels, got {sorted(channels)}.")
        proposals_shape = tuple(proposals_shape)
        if len(proposals_shape) != 3 or proposals_shape[-1] != 4:
            raise ValueError(f"`proposals` must be [B, R, 4] xyxy boxes, got shape {proposals_shape}.")
        return flat, channels.pop()

    def build(self, roi_features_shape, pyramid_shape, proposals_shape, levels_shape=None):
        flat, channels = self._check_shapes(roi_features_shape, pyramid_shape, proposals_shape)
        build_chain([self.shared_fc, self.delta_c_fc, self.delta_c], flat)
        build_chain([self.delta_r_fc, self.delta_r], self.offset_units)
        pooled = self.output_size**2 * channels
        self.tsd_cls_score.build((None, None, build_chain(self.cls_fcs, pooled)))
        self.tsd_bbox_pred.build((None, None, build_chain(self.reg_fcs, pooled)))
        self.sibling.build(tuple(roi_features_shape))

    def offsets(self, roi_features):
        """ΔC ``[B, R, k, k, 2]`` (``(x, y)`` last) and ΔR ``[B, R, 2]``, float32, from the RoI
        features ``[B, R, h, w, C]`` (eqs. 3, 5 before the scale ``γ``)."""
        shared = ops.relu(self.shared_fc(flatten_rois(ops.cast(roi_features, self.compute_dtype))))
        class_offsets = self.delta_c(ops.relu(self.delta_c_fc(shared)))
        shape, k = ops.shape(class_offsets), self.output_size
        class_offsets = ops.transpose(ops.reshape(class_offsets, (shape[0], shape[1], 2, k, k)), (0, 1, 3, 4, 2))
        region_offsets = self.delta_r(ops.relu(self.delta_r_fc(shared)))
        return ops.cast(class_offsets, "float32"), ops.cast(region_offsets, "float32")

    def call(self, roi_features, pyramid, proposals, levels=None, training=None):
        roi_features = ops.cast(roi_features, self.compute_dtype)
        pyramid = [ops.cast(p, self.compute_dtype) for p in pyramid]
        proposals = ops.cast(proposals, "float32")
        levels = None if levels is None else ops.cast(levels, "int32")
        class_offsets, region_offsets = self.offsets(roi_features)
        pool = functools.partial(multilevel_deformable_roi_pool, pyramid, proposals, output_size=self.output_size,
                                 min_level=self.min_level, sampling_ratio=self.sampling_ratio, gamma=self.gamma,
                                 levels=levels)
        class_features = run_hidden(self.cls_fcs, flatten_rois(pool(class_offsets)))
        box_features = run_hidden(self.reg_fcs, flatten_rois(pool(region_offsets)))
        outputs = {
            "class_logits": self.tsd_cls_score(class_features),
            "box_deltas": split_deltas(self.tsd_bbox_pred(box_features), self.num_outputs),
            "class_offsets": class_offsets,
            "region_offsets": region_offsets,
            "shifted_proposals": shift_proposals(proposals, region_offsets, self.gamma),
        }
        if training:
            sibling = self.sibling(roi_features)
            outputs.update(sibling_class_logits=sibling["class_logits"], sibling_box_deltas=sibling["box_deltas"])
        return outputs

    def compute_output_shape(self, roi_features_shape, pyramid_shape, proposals_shape, levels_shape=None):
        self._check_shapes(roi_features_shape, pyramid_shape, proposals_shape)
        batch, rois = tuple(proposals_shape)[:2]
        n, k = self.num_outputs, self.output_size
        return {"class_logits": (batch, rois, n), "box_deltas": (batch, rois, n, 4),
                "class_offsets": (batch, rois, k, k, 2), "region_offsets": (batch, rois, 2),
                "shifted_proposals": (batch, rois, 4)}

    def compute_output_spec(self, roi_features, pyramid, proposals, levels=None, training=None):
        shapes = self.compute_output_shape(roi_features.shape, [p.shape for p in pyramid], proposals.shape)
        if training:
            shapes.update(sibling_class_logits=shapes["class_logits"], sibling_box_deltas=shapes["box_deltas"])
        return {key: keras.KerasTensor(shape, dtype="float32" if key in FLOAT32_OUTPUTS else self.compute_dtype)
                for key, shape in shapes.items()}

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, classification_loss=self.classification_loss,
                      hidden_units=self.hidden_units, offset_units=self.offset_units, output_size=self.output_size,
                      sampling_ratio=self.sampling_ratio, gamma=self.gamma, min_level=self.min_level,
                      prior_probability=self.prior_probability)
        return config
