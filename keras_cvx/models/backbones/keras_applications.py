"""``keras.applications`` backbones (ImageNet-pretrained weights) as feature extractors with the
same ``{"C2", "C3", "C4", "C5"}`` dict outputs as ``ResNet(include_top=False)`` and
``MobileNetV2(include_top=False)``, so the detectors accept either.

Usage::

    base = keras.applications.ResNet50(include_top=False, weights="imagenet", input_shape=(640, 640, 3))
    backbone = FeatureExtractor(base)             # outputs {"C2": (B,160,160,256), ..., "C5": (B,20,20,2048)}

Default layers (checked on the Keras 3.15 models; stride = input size / feature size):

=================  =====================  =====================  =====================  ==================
model (``.name``)  C2 (stride 4)          C3 (stride 8)          C4 (stride 16)         C5 (stride 32)
=================  =====================  =====================  =====================  ==================
resnet50           conv2_block3_out 256   conv3_block4_out 512   conv4_block6_out 1024  conv5_block3_out 2048
resnet101          conv2_block3_out 256   conv3_block4_out 512   conv4_block23_out 1024 conv5_block3_out 2048
resnet152          conv2_block3_out 256   conv3_block8_out 512   conv4_block36_out 1024 conv5_block3_out 2048
mobilenetv2_*      block_2_add 24α        block_5_add 32α        block_12_add 96α       out_relu 1280
efficientnetb0     block2b_add 24         block3b_add 40         block5c_add 112        top_activation 1280
=================  =====================  =====================  =====================  ==================

Other applications (ResNetV2, EfficientNetB1–B7, ConvNeXt, ...) work with an explicit
``feature_layers`` mapping; look the names up with ``[l.name for l in model.layers]``.

Differences from this package's backbones that matter when swapping them:

* Input preprocessing is the application's, not part of the extracted model except for
  EfficientNet (which rescales 0–255 inputs itself): apply
  ``keras.applications.resnet.preprocess_input`` (RGB→BGR, ImageNet mean subtracted, no
  scaling) or ``keras.applications.mobilenet_v2.preprocess_input`` (to [−1, 1]) to the images.
* Keras's ResNets place a bottleneck's stride on the first 1×1 conv (MSRA "v1"; 3.86 GMACs for
  ResNet-50) where ``keras_cvx``'s ``ResNet`` follows torchvision ("v1.5", on the 3×3 conv,
  4.09 GMACs); ``ResNet(stride_in_1x1=True)`` is the Keras layout and takes its weights.
  Keras's convs have biases (26,560 more parameters for ResNet-50) and BN ε = 1.001e-5.
* Keras's MobileNetV2 pads stride-2 convs asymmetrically (bottom/right), ours symmetrically.
"""

import keras

from keras_cvx.models.backbones.backbone import Backbone
from keras_cvx.models.backbones.building_blocks import FEATURE_NAMES

FEATURE_LAYERS = {
    "resnet50": ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    "resnet101": ("conv2_block3_out", "conv3_block4_out", "conv4_block23_out", "conv5_block3_out"),
    "resnet152": ("conv2_block3_out", "conv3_block8_out", "conv4_block36_out", "conv5_block3_out"),
    "mobilenetv2": ("block_2_add", "block_5_add", "block_12_add", "out_relu"),
    "efficientnetb0": ("block2b_add", "block3b_add", "block5c_add", "top_activation"),
}


def default_feature_layers(model_name):
    """The ``{"C2": layer name, ...}`` table entry for a ``keras.applications`` model name
    (MobileNetV2's names carry α and the input size, e.g. ``mobilenetv2_1.00_224``)."""
    key = "mobilenetv2" if model_name.startswith("mobilenetv2_") else model_name
    if key not in FEATURE_LAYERS:
        raise ValueError(
            f"No default feature layers for application {model_name!r} (known: {sorted(FEATURE_LAYERS)}); "
            "pass `feature_layers`={'C2': layer_name, ..., 'C5': layer_name}."
        )
    return dict(zip(FEATURE_NAMES, FEATURE_LAYERS[key]))


@keras.saving.register_keras_serializable(package="keras_cvx")
class FeatureExtractor(Backbone):
    """A ``Backbone`` from a ``keras.applications`` model's input to the outputs of named
    layers (ImageNet-pretrained backbones for the detectors).

    Args:
        application: a built ``keras.applications`` model (usually ``include_top=False``) or
            any Functional model, or its serialized form (as ``get_config`` stores it).
        feature_layers: ``{"C2": layer name, ..., "C5": layer name}`` (any keys); ``None``
            looks ``application.name`` up in ``FEATURE_LAYERS``.
        name: model name (default ``"{application.name}_features"``).

    Outputs: the dict of the named layers' outputs; the layers and weights are
    ``application``'s (shared, not copied).

    Example:

    >>> import keras
    >>> from keras_cvx.models.backbones import FeatureExtractor
    >>> base = keras.applications.MobileNetV2(input_shape=(64, 64, 3), include_top=False, weights=None)
    >>> backbone = FeatureExtractor(base)
    >>> {key: tuple(shape) for key, shape in backbone.compute_output_shape((1, 64, 64, 3)).items()}
    {'C2': (1, 16, 16, 24), 'C3': (1, 8, 8, 32), 'C4': (1, 4, 4, 96), 'C5': (1, 2, 2, 1280)}
    """

    def __init__(self, application, feature_layers=None, name=None, **kwargs):
        if isinstance(application, dict):
            application = keras.saving.deserialize_keras_object(application)
        if not isinstance(application, keras.Model):
            raise ValueError(f"`application` must be a keras.Model, got {application!r}.")
        if feature_layers is None:
            feature_layers = default_feature_layers(application.name)
        if not isinstance(feature_layers, dict) or not feature_layers:
            raise ValueError(
                f"`feature_layers` must be a non-empty dict of output name -> layer name, got {feature_layers!r}."
            )
        known = {layer.name for layer in application.layers}
        missing = sorted(layer for layer in feature_layers.values() if layer not in known)
        if missing:
            raise ValueError(f"`feature_layers` names layers that {application.name!r} lacks: {missing}.")
        outputs = {key: application.get_layer(layer).output for key, layer in feature_layers.items()}
        inputs = application.inputs[0] if len(application.inputs) == 1 else application.inputs
        arguments = dict(application=keras.saving.serialize_keras_object(application),
                         feature_layers=dict(feature_layers))
        super().__init__(inputs, outputs, arguments, name=name or f"{application.name}_features", **kwargs)
