"""FCOS's three detection losses over a batch of dense predictions, as CondInst and PointINS
train them.

Papers: "FCOS: Fully Convolutional One-Stage Object Detection", Z. Tian, C. Shen, H. Chen,
T. He, arXiv 1904.01355 (Sec. 3.1 eq. 2, the loss; Sec. 3.3 center-ness) with the "improved
FCOS" options of AdelaiDet (``FCOSOutputs.losses``), as in CondInst (arXiv 2003.05664)::

    loss_cls = Σ focal(α 0.25, γ 2) over locations x classes / N_pos
    loss_box = Σ_pos c* (1 - GIoU) / Σ_pos c*          c* the center-ness targets
    loss_ctr = Σ_pos BCE(ctr, c*) / N_pos

``N_pos`` and ``Σ c*`` are the counts of the global batch under ``tf.distribute`` (the
``keras_cvx.training.Trainer`` passes them as ``y["loss_normalizers"]``; see
``keras_cvx.losses.replicas.normalized_sum``).
"""

from keras import ops

from keras_cvx.losses.focal import sigmoid_focal_loss
from keras_cvx.losses.iou import ltrb_iou_loss
from keras_cvx.losses.replicas import normalized_sum


def fcos_normalizers(targets):
    """``{"num_positives", "centerness_sum"}`` (float32) of ``FCOSLabelEncoder`` targets: the
    counts that normalise the FCOS losses (a model's ``loss_normalizers``)."""
    return {"num_positives": ops.sum(ops.cast(targets["labels"] >= 0, "float32")),
            "centerness_sum": ops.sum(targets["centerness_targets"])}


def fcos_loss_terms(targets, y_pred, y=None, image_weight=None):
    """FCOS's ``loss_cls``, ``loss_box`` and ``loss_ctr`` (module docstring).

    Args:
        targets: ``FCOSLabelEncoder`` output: ``labels [B, N]`` (-1 background),
            ``box_targets [B, N, 4]`` and ``centerness_targets [B, N]``.
        y_pred: ``class_logits [B, N, K]``, ``box_regression [B, N, 4]`` (``l, t, r, b`` in
            strides) and ``centerness_logits [B, N]``.
        y: the model's targets dict; its ``"loss_normalizers"`` (when present) give the global
            ``N_pos`` and ``Σ c*``.
        image_weight: float32 ``[B]`` weights of the images (default 1).

    Returns: dict of float32 scalars ``loss_cls``, ``loss_box``, ``loss_ctr``, each the
    replica's share under ``tf.distribute``.
    """
    labels = targets["labels"]
    positive = ops.cast(labels >= 0, "float32")
    if image_weight is None:
        image_weight = ops.ones_like(positive[:, 0])
    location_weight = image_weight[:, None]
    one_hot = ops.one_hot(ops.maximum(labels, 0), y_pred["class_logits"].shape[-1]) * positive[..., None]
    focal = sigmoid_focal_loss(one_hot, y_pred["class_logits"])
    terms = {"loss_cls": normalized_sum(ops.sum(ops.sum(focal, axis=-1) * location_weight), ops.sum(positive), y,
                                        key="num_positives")}
    ctr_targets = targets["centerness_targets"]
    giou = ltrb_iou_loss(targets["box_targets"], y_pred["box_regression"], "giou")
    box_total = ops.sum(ops.where(positive > 0, giou * ctr_targets, 0.0) * location_weight)
    terms["loss_box"] = normalized_sum(box_total, ops.sum(ctr_targets), y, key="centerness_sum")
    ctr_logits = ops.cast(y_pred["centerness_logits"], "float32")
    bce = ops.relu(ctr_logits) - ctr_logits * ctr_targets + ops.log1p(ops.exp(-ops.abs(ctr_logits)))
    terms["loss_ctr"] = normalized_sum(ops.sum(bce * positive * location_weight), ops.sum(positive), y,
                                       key="num_positives")
    return terms
