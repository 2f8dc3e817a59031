"""Top-K knowledge distillation, the teacher term of KD for AutoAugment.

Paper: "Circumventing Outliers of AutoAugment with Knowledge Distillation", L. Wei, A. Xiao,
L. Xie, X. Chen, X. Zhang, Q. Tian, ECCV 2020, arXiv 2003.11342.
No official code was released; the only public re-implementation is the
``DistillationLoss`` of ``Chenyang4/ReSmooth`` (``RandAugment/loss.py``).

The teacher sees the same augmented image as the student. With teacher logits t [B, C] and
student logits s [B, C]:

    idx = top_k(t, K)                                  [B, K] (teacher's K best classes)
    q   = softmax(t[idx] / T),   p = softmax(s[idx] / T)   (both renormalised over those K)
    L_KD = weight · T² · mean_b KL(q ‖ p),   KL(q ‖ p) = Σ_k q_k (log q_k − log p_k)

and the paper's total loss is ``CE(y, softmax(s)) + λ L_KD`` ("two-source supervision").

The paper reports K = 5 (ImageNet) and λ = 0.5 as its best settings. Choices we could not
confirm from the paper, all exposed as arguments:
  * renormalisation over the K gathered classes and KL(teacher ‖ student) (Hinton's direction;
    ``kl_direction="student_teacher"`` gives the ReSmooth re-implementation's reverse KL);
  * temperature T = 1 by default (ReSmooth uses 5), with the T² factor;
  * the ground-truth class is not forced into the top K.
Unlike ``keras.distillation.LogitsDistillation`` (KL over all C classes), only the teacher's
top K classes carry a target. ``keras.distillation.Distiller`` combines losses as
``a · CE + (1 − a) · Σ w_i L_i`` (``a = student_loss_weight``), so the paper's λ = 0.5 is
``a = 2/3`` (the total is then scaled by 2/3) or ``weight = λ`` in a custom loop.
Computed in float32; the teacher logits are wrapped in ``stop_gradient``.
"""

import keras
from keras import ops

from keras_cvx.validation import require_choice, require_positive, require_positive_int

KL_DIRECTIONS = ("teacher_student", "student_teacher")


def top_k_kl_divergence(teacher_logits, student_logits, k, temperature=1.0, kl_direction="teacher_student"):
    """Per-sample KL [B] between teacher and student softmaxes over the teacher's top-K classes."""
    teacher = ops.stop_gradient(ops.cast(teacher_logits, "float32"))
    student = ops.cast(student_logits, "float32")
    k = min(k, teacher.shape[-1])
    _, indices = ops.top_k(teacher, k=k)
    log_q = ops.log_softmax(ops.take_along_axis(teacher, indices, axis=-1) / temperature, axis=-1)
    log_p = ops.log_softmax(ops.take_along_axis(student, indices, axis=-1) / temperature, axis=-1)
    if kl_direction == "student_teacher":
        log_q, log_p = log_p, log_q
    return ops.sum(ops.exp(log_q) * (log_q - log_p), axis=-1)


@keras.saving.register_keras_serializable(package="keras_cvx")
class TopKDistillation(keras.distillation.DistillationLoss):
    """Top-K distillation term of KD for AutoAugment: ``weight · T² · mean_b KL(q ‖ p)``.

    Paper: "Circumventing Outliers of AutoAugment with Knowledge Distillation", L. Wei et al.,
    ECCV 2020, https://arxiv.org/abs/2003.11342. ``q`` and ``p`` are the teacher's and the
    student's softmaxes at temperature T over the teacher's K highest-scoring classes only
    (renormalised over those K; module docstring). A ``keras.distillation.DistillationLoss``
    for ``keras.distillation.Distiller``; the ground-truth cross-entropy is the Distiller's
    student loss.

    Args:
        k: number of teacher classes kept (default 5, the paper's best on ImageNet; ``k >= C``
            means all classes).
        temperature: ``T`` (default 1.0).
        weight: ``λ`` applied inside this loss (default 1.0: leave the weighting to the
            Distiller).
        kl_direction: ``"teacher_student"`` (KL(q ‖ p), default) or ``"student_teacher"``
            (the ReSmooth re-implementation's reverse KL).

    ``compute_loss(teacher_outputs, student_outputs)``: logits [B, C] each -> float32 scalar.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.losses import TopKDistillation
    >>> teacher = np.array([[3.0, 1.0, 0.2, -1.0, 2.0]], "float32")
    >>> student = np.array([[1.0, 0.0, 0.0, 0.0, 0.0]], "float32")
    >>> round(float(TopKDistillation(k=3).compute_loss(teacher, student)), 6)   # classes 0, 4, 1
    0.053808
    >>> round(float(TopKDistillation(k=5).compute_loss(teacher, student)), 6)   # all classes
    0.256499
    >>> round(float(TopKDistillation(k=3).compute_loss(teacher, teacher)), 6)
    0.0
    """

    def __init__(self, k=5, temperature=1.0, weight=1.0, kl_direction="teacher_student"):
        self.k = require_positive_int("k", k)
        self.temperature = require_positive("temperature", temperature)
        self.weight = float(weight)
        if self.weight < 0:
            raise ValueError(f"`weight` must be >= 0, got {weight!r}.")
        self.kl_direction = require_choice("kl_direction", kl_direction, KL_DIRECTIONS)

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        kl = top_k_kl_divergence(teacher_outputs, student_outputs, self.k, self.temperature, self.kl_direction)
        return self.weight * self.temperature**2 * ops.mean(kl)

    def get_config(self):
        return {"k": self.k, "temperature": self.temperature, "weight": self.weight, "kl_direction": self.kl_direction}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
