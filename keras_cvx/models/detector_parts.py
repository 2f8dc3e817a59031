"""What the detectors (``SSDNet``, ``FasterRCNN``, ``CondInst``, ``PointINS``) share: the input
size check, named ResNet backbones, parts given as objects, serialized dicts or ``None`` (the
default part), the instance-segmentation targets check, and the ``Detector`` base class
(``predict_step`` = ``decode(call(images))``, ``compute_loss`` = the sum of ``loss_terms``)."""

import keras
import numpy as np
from keras import ops

from keras_cvx.models.backbones.resnet import ResNet
from keras_cvx.models.backbones.vgg import scaled_channels
from keras_cvx.validation import check_labels

RESNET_DEPTHS = {"resnet10": 10, "resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}
"""Backbone names a detector accepts (``keras_cvx.models.ResNet`` of that depth)."""

IMAGENET_MEAN = (123.675, 116.28, 103.53)
"""RGB mean subtracted from the input (Detectron2's BGR mean in RGB order; std 1)."""


def detector_image_size(image_size):
    """``(height, width)`` of a detector's padded input: ints, multiples of 32 (an int means a
    square); ``ValueError`` naming ``image_size`` otherwise."""
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        image_size = (int(image_size), int(image_size))
    if (not isinstance(image_size, (list, tuple)) or len(image_size) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 32 or v % 32
                   for v in image_size)):
        raise ValueError(f"`image_size` must be (height, width) (or an int), multiples of 32, got {image_size!r}.")
    return int(image_size[0]), int(image_size[1])


def deserialize_part(value, default):
    """A detector part: ``default()`` for None, the object of a serialized dict, or ``value``."""
    if value is None:
        return default()
    if isinstance(value, dict):
        return keras.saving.deserialize_keras_object(value)
    return value


def detector_backbone(backbone, image_size, width_multiplier, keys):
    """The backbone model of a detector and the static shapes of its outputs ``keys``.

    Args:
        backbone: a name of ``RESNET_DEPTHS``, a ``keras.Model`` returning a dict with ``keys``,
            or such a model serialized.
        image_size: ``(height, width)``.
        width_multiplier: of a named ResNet (base width 64 x it, at least 8).
        keys: the feature names the detector needs, e.g. ``("C2", "C3", "C4", "C5")``.

    Returns: ``(model, {key: shape})``.
    """
    if isinstance(backbone, dict):
        backbone = keras.saving.deserialize_keras_object(backbone)
    if isinstance(backbone, str):
        if backbone not in RESNET_DEPTHS:
            raise ValueError(f"`backbone` must be one of {sorted(RESNET_DEPTHS)} or a keras.Model, got {backbone!r}.")
        backbone = ResNet(RESNET_DEPTHS[backbone], include_top=False, input_shape=tuple(image_size) + (3,),
                          base_width=scaled_channels(64, width_multiplier))
    elif not isinstance(backbone, keras.Model):
        raise ValueError(f"`backbone` must be one of {sorted(RESNET_DEPTHS)} or a keras.Model, got {backbone!r}.")
    outputs = backbone.output if hasattr(backbone, "output") else None
    if not isinstance(outputs, dict) or any(k not in outputs for k in keys):
        raise ValueError(f"`backbone` must return a dict with {list(keys)}, got "
                         f"{None if outputs is None else type(outputs).__name__}.")
    return backbone, {k: tuple(outputs[k].shape) for k in keys}


def decoding_predict_step(model, args):
    """A detector's ``predict_step``: ``model.decode(model(images, training=False))``.

    ``args`` are ``predict_step``'s: ``(data,)``, or ``(state, data)`` from Keras's JAX trainer,
    which expects ``(outputs, non_trainable_variables)`` back.
    """
    if len(args) == 2:
        outputs, state = keras.Model.predict_step(model, *args)  # not super(): no __class__ cell for AutoGraph
        return model.decode(outputs), state
    x, _, _ = keras.utils.unpack_x_y_sample_weight(args[0])
    return model.decode(model(x, training=False))


def check_instance_targets(model, y):
    """ValueError unless ``y`` holds ``boxes``, ``labels`` (valid class ids of ``model``) and
    ``masks [B, M, H / s, W / s]`` on the grid of ``model.mask_stride`` (an instance model's
    targets, ``coco_dataset(..., mask_stride=s)``)."""
    name, stride = type(model).__name__, model.mask_stride
    if not isinstance(y, dict) or any(k not in y for k in ("boxes", "labels", "masks")):
        raise ValueError(f"{name} needs targets {{'boxes', 'labels', 'masks'}} (coco_dataset(..., mask_stride="
                         f"{stride})), got {list(y) if isinstance(y, dict) else type(y).__name__}.")
    expected = (model.image_size[0] // stride, model.image_size[1] // stride)
    if tuple(y["masks"].shape[-2:]) != expected:
        raise ValueError(f"`masks` must be [B, M, {expected[0]}, {expected[1]}] (stride {stride}), "
                         f"got shape {tuple(y['masks'].shape)}.")
    check_labels(y["labels"], model.num_classes)


def summed_loss_terms(model, x, y, y_pred, sample_weight, training):
    """A detector's ``compute_loss``: the sum of ``model.loss_terms(y, y_pred, sample_weight)``
    (``y_pred = model(x)`` when not given), each term also updating the Keras metric of its name
    in ``model.loss_trackers``. Under a ``tf.distribute`` strategy the terms, and so the sum, are
    the replica's shares of the global-batch loss."""
    if y_pred is None:
        y_pred = model(x, training=training)
    terms = model.loss_terms(y, y_pred, sample_weight)
    for tracker in model.loss_trackers:
        if tracker.name in terms:
            tracker.update_state(terms[tracker.name])
    return ops.sum(ops.stack(list(terms.values())))


class Detector(keras.Model):
    """Base class of the keras_cvx detectors (``SSDNet``, ``CondInst``, ``FasterRCNN``,
    ``PointINS``): subclasses define ``call``, ``decode`` and either ``loss_terms(y, y_pred,
    sample_weight) -> dict`` (with ``loss_trackers``) or their own ``compute_loss``.

    * ``predict_step(images)`` -> ``decode(self(images, training=False))`` (also Keras's JAX
      ``predict_step(state, data)``): the detection contract.
    * ``compute_loss(x, y, y_pred, sample_weight, training)`` -> the sum of ``loss_terms``
      (``summed_loss_terms``).
    """

    def predict_step(self, *args):
        return decoding_predict_step(self, args)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return summed_loss_terms(self, x, y, y_pred, sample_weight, training)
