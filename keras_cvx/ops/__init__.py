"""Pure ``keras.ops`` functions on tensors (boxes, anchors, matching, sampling, NMS, RoIAlign).

Float32 inside under every dtype policy, static shapes, compiled by XLA and run under JAX.
"""

from keras_cvx.ops.anchors import SSD_CONFIGS, fcos_locations, fpn_anchors, ssd_anchors
from keras_cvx.ops.boxes import (
    aligned_iou,
    box_area,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    pairwise_giou,
    pairwise_iou,
)
from keras_cvx.ops.deformable_roi_pool import (
    deformable_roi_pool,
    mmdet_roi_level,
    multilevel_deformable_roi_pool,
)
from keras_cvx.ops.masks import crop_mask_targets, paste_masks
from keras_cvx.ops.matching import argmax_iou_match, fcos_match, gather_matches, ssd_match
from keras_cvx.ops.nms import class_aware_non_max_suppression, non_max_suppression
from keras_cvx.ops.roi_align import bilinear_sample, fpn_level, multilevel_roi_align, roi_align
from keras_cvx.ops.sampling import sample_balanced, sample_subset
from keras_cvx.ops.upsampling import aligned_bilinear
