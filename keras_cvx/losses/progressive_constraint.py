"""TSD's progressive constraint (PC): the TSD branches must beat the sibling head by a margin.

Paper: "Revisiting the Sibling Head in Object Detector", G. Song, Y. Liu, X. Wang, CVPR 2020,
arXiv 2003.07540, Sec. 3.3, eqs. 7-8, with the details of the official code (Sense-X/TSD,
``TSDSharedFCBBoxHead.loss``)::

    M_cls = | H_1(y | F, P) − H^D_1(y | F, τ_c(P, ΔC)) + m_c |_+                          (7)
    M_loc = | IoU(B̂, B) − IoU(B̂_D, B) + m_r |_+        positives only                    (8)

Per element, with ``p`` the sibling head's value (true-class probability or IoU) and ``q`` the
TSD branch's::

    loss = max(0, sg(p) + sg(min(1 − p, m)) − q)          sg = stop_gradient, m = 0.3

* the sibling values are detached (the sibling head learns only from its own losses) and the
  margin is clamped to ``1 − p`` so the target never exceeds 1 (code details, not in eqs. 7-8);
  the loss is 0 exactly when ``q − p ≥ min(m, 1 − p)``;
* ``M_cls`` covers every sampled RoI, negatives included (their true class is background);
  ``M_loc`` only the positives, with ``B̂ = decode(P, sibling deltas of the label)`` and
  ``B̂_D = decode(P̂_r, TSD deltas of the label)``; ``B̂_D`` depends on the undetached shifted
  proposal P̂_r, so ``M_loc`` back-propagates into ΔR as in the official code;
* both are plain means over the elements that count (all weights 1 in the total loss);
  margins ``m_c = m_r = 0.3`` in every released config.

Differences from the reference implementation: padding rows (label −1, weight 0) are left out
of the means, and a batch with nothing to count gives 0 (the reference adds one 0 entry per
image without positives, which changes the mean slightly); IoU uses the package's ``x2 − x1``
widths (mmdet v1: ``x2 − x1 + 1``); background is the last class. Our extension: classifiers
without a background column ("sigmoid", "eql") take ``Π_j (1 − σ(z_j))``, the probability that
no class fires, as the background probability (the paper's PC uses a softmax head).
"""

from keras import ops

from keras_cvx.ops.boxes import aligned_iou
from keras_cvx.validation import check_labels, require_choice, require_unit_interval

CLASSIFICATION_LOSSES = ("softmax", "sigmoid", "eql", "eqlv2")
_WITH_BACKGROUND_COLUMN = ("softmax", "eqlv2")
DEFAULT_MARGIN = 0.3
"""``m_c = m_r = 0.3``, the margins of every released TSD config."""


def progressive_constraint(sibling_values, tsd_values, margin=DEFAULT_MARGIN, weights=None):
    """Mean hinge ``max(0, sg(p) + sg(min(1 − p, m)) − q)`` of TSD's progressive constraint
    (arXiv 2003.07540, eqs. 7-8; module docstring).

    Args:
        sibling_values: ``p`` ``[...]``: the sibling head's true-class probabilities (eq. 7) or
            IoUs with the ground truth (eq. 8); detached.
        tsd_values: ``q`` ``[...]``: the TSD branch's values, same shape.
        margin: ``m`` (default 0.3), clamped to ``1 − p`` per element.
        weights: optional ``[...]`` mask; the elements with weight > 0 are averaged (others
            and padding left out). Default: all elements.

    Returns: float32 scalar; 0 when no element counts.

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.losses.progressive_constraint import progressive_constraint
    >>> p = np.array([0.5, 0.9, 0.2, 0.4], "float32")    # targets p + min(1 - p, 0.3): 0.8, 1.0, 0.5, 0.7
    >>> q = np.array([0.6, 0.95, 0.9, 0.0], "float32")   # hinges 0.2, 0.05, 0, 0.7 (last one masked)
    >>> round(float(progressive_constraint(p, q, 0.3, weights=np.array([1, 1, 1, 0]))), 4)
    0.0833
    """
    margin = require_unit_interval("margin", margin, include_one=True)
    p = ops.stop_gradient(ops.cast(sibling_values, "float32"))
    q = ops.cast(tsd_values, "float32")
    target = ops.stop_gradient(p + ops.minimum(1.0 - p, margin))
    hinge = ops.relu(target - q)
    if weights is None:
        mask = ops.ones_like(hinge)
    else:
        mask = ops.broadcast_to(ops.cast(ops.cast(weights, "float32") > 0, "float32"), ops.shape(hinge))
    return ops.sum(ops.where(mask > 0, hinge, 0.0)) / ops.maximum(ops.sum(mask), 1.0)


def true_class_probability(logits, labels, classification_loss="softmax"):
    """Probability that a classifier gives the labelled class (TSD's ``H_1(y | F, P)``, eq. 7).

    * "softmax" (``K + 1`` columns, background last): ``softmax(z)[y]``;
    * "eqlv2" (``K + 1`` sigmoid columns, background last): ``σ(z_y)``;
    * "sigmoid" / "eql" (``K`` columns, no background logit): ``σ(z_y)`` for an object class,
      ``Π_j (1 − σ(z_j))`` (no class fires; our extension) for background ``y = K``.

    Args:
        logits: ``[..., n]`` classification logits (``n = K + 1`` or ``K`` as above).
        labels: integer ``[...]``: ``0..K-1`` object classes, ``K`` background, −1 padding
            (other values raise a ``ValueError`` in eager mode).
        classification_loss: "softmax" (default), "sigmoid", "eql" or "eqlv2".

    Returns: float32 ``[...]``; 0 for padding labels (mask them out).

    Example:

    >>> import keras, numpy as np
    >>> from keras_cvx.losses.progressive_constraint import true_class_probability
    >>> logits = np.log(np.array([[1.0, 2.0, 1.0], [1.0, 2.0, 1.0]], "float32"))
    >>> [round(float(v), 4) for v in true_class_probability(logits, np.array([1, 2]))]   # softmax, K = 2
    [0.5, 0.25]
    >>> zeros = np.zeros((2, 2), "float32")                   # sigmoid, K = 2: σ(0) = 0.5
    >>> [round(float(v), 4) for v in true_class_probability(zeros, np.array([0, 2]), "sigmoid")]
    [0.5, 0.25]
    """
    require_choice("classification_loss", classification_loss, CLASSIFICATION_LOSSES)
    logits = ops.cast(logits, "float32")
    columns = logits.shape[-1]
    with_background = classification_loss in _WITH_BACKGROUND_COLUMN
    num_classes = columns - 1 if with_background else columns
    labels = ops.cast(check_labels(labels, num_classes, background=True), "int32")
    probabilities = ops.softmax(logits, axis=-1) if classification_loss == "softmax" else ops.sigmoid(logits)
    index = ops.clip(labels, 0, columns - 1)
    picked = ops.take_along_axis(probabilities, index[..., None], axis=-1)[..., 0]
    if not with_background:  # log Π (1 − σ(z)) = −Σ softplus(z)
        nothing_fires = ops.exp(-ops.sum(ops.softplus(logits), axis=-1))
        picked = ops.where(labels == num_classes, nothing_fires, picked)
    return ops.where(labels >= 0, picked, 0.0)


def classification_progressive_constraint(sibling_logits, tsd_logits, labels, classification_loss="softmax",
                                          margin=DEFAULT_MARGIN):
    """``M_cls`` (arXiv 2003.07540, eq. 7): the mean over every labelled RoI, background
    included, of ``max(0, p + min(1 − p, m) − q)`` with ``p``, ``q`` the sibling head's and the
    TSD branch's true-class probabilities (``true_class_probability``; ``p`` detached).

    Args:
        sibling_logits: ``[..., n]`` logits of the sibling head (no gradient flows into them).
        tsd_logits: ``[..., n]`` logits of the TSD classification branch.
        labels: integer ``[...]``: ``0..K-1``, ``K`` background, −1 padding (left out).
        classification_loss: "softmax" (default), "sigmoid", "eql" or "eqlv2".
        margin: ``m_c`` (default 0.3).

    Returns: float32 scalar.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.losses.progressive_constraint import classification_progressive_constraint
    >>> sibling, tsd = np.zeros((3, 3), "float32"), np.zeros((3, 3), "float32")   # both 1/3
    >>> round(float(classification_progressive_constraint(sibling, tsd, np.array([0, 2, -1]))), 4)
    0.3
    """
    p = true_class_probability(sibling_logits, labels, classification_loss)
    q = true_class_probability(tsd_logits, labels, classification_loss)
    return progressive_constraint(p, q, margin, weights=ops.convert_to_tensor(labels) >= 0)


def localization_progressive_constraint(sibling_boxes, tsd_boxes, target_boxes, positive, margin=DEFAULT_MARGIN):
    """``M_loc`` (arXiv 2003.07540, eq. 8): the mean over the positive RoIs of
    ``max(0, u + min(1 − u, m) − IoU(B̂_D, B))`` with ``u = IoU(B̂, B)`` detached
    (``keras_cvx.ops.boxes.aligned_iou``).

    Args:
        sibling_boxes: ``[..., 4]`` ``xyxy`` ``B̂ = decode(P, sibling deltas of the label)``.
        tsd_boxes: ``[..., 4]`` ``xyxy`` ``B̂_D = decode(P̂_r, TSD deltas of the label)``
            (decoded from the undetached shifted proposals, so ΔR gets a gradient).
        target_boxes: ``[..., 4]`` ``xyxy`` matched ground truth ``B``.
        positive: ``[...]`` mask of the positive RoIs (negatives and padding left out).
        margin: ``m_r`` (default 0.3).

    Returns: float32 scalar; 0 without positives.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.losses.progressive_constraint import localization_progressive_constraint
    >>> target = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], "float32")
    >>> sibling = np.array([[0, 0, 10, 5], [0, 0, 10, 10]], "float32")       # IoU 0.5 (second: negative)
    >>> tsd = np.array([[0, 0, 10, 6], [0, 0, 1, 1]], "float32")             # IoU 0.6 < 0.5 + 0.3
    >>> round(float(localization_progressive_constraint(sibling, tsd, target, np.array([True, False]))), 4)
    0.2
    """
    u = aligned_iou(sibling_boxes, target_boxes)
    v = aligned_iou(tsd_boxes, target_boxes)
    return progressive_constraint(u, v, margin, weights=positive)
