"""VGG16 trunk with SSD's modifications and extra layers: the SSD300/SSD512 feature pyramid.

Papers: "Very Deep Convolutional Networks for Large-Scale Image Recognition", K. Simonyan,
A. Zisserman, arXiv 1409.1556 (configuration D); "SSD: Single Shot MultiBox Detector",
W. Liu et al., arXiv 1512.02325 (Sec. 3, Fig. 2); the pyramid NETNet builds on ("Neighbor
Erasing and Transferring Network for Better Single Shot Object Detection", Y. Li et al.,
CVPR 2020, arXiv 2001.06690, Sec. 3).

Layers (every conv 3×3 'same' + ReLU unless stated; sizes at 300 / 512 input):

    conv1_1..conv1_2   64, pool1 2×2/2              300 → 150   512 → 256
    conv2_1..conv2_2  128, pool2 2×2/2              150 → 75    256 → 128
    conv3_1..conv3_3  256  -> "conv3_3"             75          128
    pool3 2×2/2 ceil mode                           75 → 38     128 → 64
    conv4_1..conv4_3  512 -> "p1" = L2Norm(conv4_3) (γ init 20)  38    64
    pool4 2×2/2, conv5_1..conv5_3 512               19          32
    pool5 3×3/1 pad 1, conv6 3×3 dilation 6 1024, conv7 1×1 1024 -> "p2" (fc7)   19   32
    extras (each a 1×1 conv + ReLU, then a conv + ReLU):
      300: conv8 256→512 3×3/2 p1 "p3" 10, conv9 128→256 3×3/2 p1 "p4" 5,
           conv10 128→256 3×3 p0 "p5" 3, conv11 128→256 3×3 p0 "p6" 1
      512: conv8 256→512 3×3/2 p1 "p3" 16, conv9..conv11 128→256 3×3/2 p1 "p4".."p6" 8, 4, 2,
           conv12 128→256 4×4/1 p1 "p7" 1

Output: a dict of these maps (NHWC). Parameters at ``width_multiplier=1``: 20,484,416 up to
"p2" (VGG16 convs 14,714,688 + conv6 4,719,616 + conv7 1,049,600 + L2Norm 512), plus extras
2,459,520 (300) or 3,016,960 (512).

Notes and choices:
* The input is a float image already mean-subtracted (SSD: BGR − (104, 117, 123)); the
  detector does the preprocessing.
* pool3's ceil mode (75 → 38) is Keras max pooling with ``padding="same"``: with an odd size the
  one padded row/column is at the bottom/right and max pooling ignores it, so the windows are
  PyTorch's ``ceil_mode=True`` ones. pool1, pool2 and pool4 use 'same' too (Caffe's pooling is
  always ceil mode); their inputs have even sizes at 300 and 512, where it changes nothing. pool5 (3×3, stride 1, pad 1) is 'same' max pooling, and
  conv6's padding 6 with dilation 6 is 'same'.
* The stride-2 extras use explicit zero padding 1 then 'valid' (Caffe/PyTorch ``pad=1``):
  Keras 'same' would pad only the bottom/right of an even-sized map (10 → 5) and shift the
  sampling grid by one pixel.
* ``width_multiplier`` scales every channel count (rounded, at least 8) so that a tiny model
  trains on a CPU; 1.0 is the paper's network. L2Norm's scale is ``l2_norm_scale``.
* Initialisation: Glorot-uniform kernels by default (SSD's xavier for new layers; the
  ``kernel_initializer`` argument), zero biases. ``weights="imagenet"`` initialises conv1_1 …
  conv7 from ``keras.applications.VGG16(include_top=True, weights="imagenet")`` (downloaded
  by Keras on first use, 528 MB) with ``convert_vgg16_weights``; the extra layers and L2Norm
  keep their initialisation, as in SSD.

ImageNet weights (``convert_vgg16_weights``), SSD's conversion (SSD paper Sec. 3, "we
convert fc6 and fc7 to convolutional layers, subsample parameters from fc6 and fc7, change
pool5 from 2×2-s2 to 3×3-s1, and use the à trous algorithm"; the same decimation as
DeepLab-LargeFOV, arXiv 1412.7062 Sec. 4.1):

* conv1_1 … conv5_3 ← ``block1_conv1`` … ``block5_conv3``, unchanged.
* conv6 (3×3, dilation 6, 1024) ← fc6 (``fc1``, 7·7·512 → 4096) seen as a 7×7 convolution on
  pool5: keep every 4th output unit (0, 4, …, 4092) and every 3rd kernel tap in each
  direction (0, 3, 6). Taps 3 cells apart at VGG's pool5 stride 32 are 6 cells apart at
  conv6's stride 16 (SSD's pool5 has stride 1), hence the dilation 6.
* conv7 (1×1, 1024) ← fc7 (``fc2``, 4096 → 4096): every 4th input and output unit.
* Input channels: Keras's VGG16 weights (from the Caffe model) take BGR images minus the
  ImageNet mean (``keras.applications.vgg16.preprocess_input``); with ``rgb_input=True`` (the
  default, what ``SSDNet`` feeds: RGB minus (123, 117, 104)) conv1_1's input channels are
  reversed so the converted network takes RGB. SSD's mean (104, 117, 123) BGR differs from
  Keras's (103.939, 116.779, 123.68) by less than 0.33.
* Difference from the reference: Caffe SSD ships the converted model
  (``VGG_ILSVRC_16_layers_fc_reduced.caffemodel``) rather than the conversion; the offsets
  (unit 0, taps 0/3/6) are those of the public PyTorch re-implementations' decimation, which
  could not be checked against that file.
"""

import keras
import numpy as np

from keras_cvx.layers.l2_normalization import L2Normalization
from keras_cvx.models.backbones.backbone import Backbone
from keras_cvx.validation import require_positive

VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
"""Output channels of the 13 VGG16 convolutions, per block (conv1_x … conv5_x)."""

SSD_EXTRAS = {
    300: ((256, 512, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 1, 0), (128, 256, 3, 1, 0)),
    512: (
        (256, 512, 3, 2, 1),
        (128, 256, 3, 2, 1),
        (128, 256, 3, 2, 1),
        (128, 256, 3, 2, 1),
        (128, 256, 4, 1, 1),
    ),
}
"""SSD extra layers after fc7 per input size: (1×1 channels, conv channels, kernel, stride, padding)."""


def scaled_channels(channels, width_multiplier):
    """``channels · width_multiplier`` rounded, at least 8."""
    return max(8, int(round(channels * width_multiplier)))


WEIGHTS = (None, "imagenet")


@keras.saving.register_keras_serializable(package="keras_cvx")
class VGG16SSD(Backbone):
    """The SSD feature pyramid on VGG16 as a ``Backbone``.

    Args:
        image_size: 300 (default; six levels p1..p6) or 512 (seven levels p1..p7).
        width_multiplier: scales every channel count (default 1.0 = the paper).
        l2_norm_scale: initial γ of the L2Norm on conv4_3 (default 20).
        name: of the model (default ``"vgg16_ssd"``).
        kernel_initializer: of every convolution (default ``"glorot_uniform"``; biases start
            at zero).
        weights: ``None`` (default) or ``"imagenet"``: conv1_1 … conv7 converted from
            ``keras.applications.VGG16(include_top=True, weights="imagenet")`` (downloaded by
            Keras; needs ``width_multiplier=1.0``); the model then takes RGB images minus the
            mean (see the module docstring).

    Outputs: from ``(image_size, image_size, 3)`` float images, a dict
    ``{"conv3_3", "p1", …, "p6"[, "p7"]}`` of NHWC maps.

    Example::

        import numpy as np
        trunk = VGG16SSD(300, width_multiplier=0.125)          # a small random-init pyramid
        features = trunk(np.zeros((1, 300, 300, 3), "float32"))  # features["p1"]: (1, 38, 38, 64)
        # VGG16SSD(300, weights="imagenet") downloads VGG16 and converts fc6/fc7 to conv6/conv7
    """

    def __init__(self, image_size=300, width_multiplier=1.0, l2_norm_scale=20.0, name="vgg16_ssd",
                 kernel_initializer="glorot_uniform", weights=None, **kwargs):
        kernel_initializer = keras.initializers.get(kernel_initializer)
        arguments = dict(image_size=image_size, width_multiplier=width_multiplier, l2_norm_scale=l2_norm_scale,
                         kernel_initializer=keras.initializers.serialize(kernel_initializer))
        images, outputs = _vgg16_ssd_graph(image_size, width_multiplier, l2_norm_scale, kernel_initializer, weights)
        super().__init__(images, outputs, arguments, name=name, **kwargs)
        if weights == "imagenet":
            convert_vgg16_weights(keras.applications.VGG16(include_top=True, weights="imagenet"), self)


def _vgg16_ssd_graph(image_size, width_multiplier, l2_norm_scale, kernel_initializer, weights):
    """``(inputs, outputs)`` of ``VGG16SSD`` (arguments as there)."""
    if image_size not in SSD_EXTRAS:
        raise ValueError(f"`image_size` must be one of {sorted(SSD_EXTRAS)}, got {image_size!r}.")
    width_multiplier = require_positive("width_multiplier", width_multiplier)
    l2_norm_scale = require_positive("l2_norm_scale", l2_norm_scale)
    if weights not in WEIGHTS:
        raise ValueError(f"`weights` must be one of {list(WEIGHTS)}, got {weights!r}.")
    if weights == "imagenet" and width_multiplier != 1.0:
        raise ValueError(f"`weights`='imagenet' needs `width_multiplier`=1.0 (VGG16's widths), got {width_multiplier}.")

    def conv(filters, kernel_size, layer_name, **kwargs):
        return keras.layers.Conv2D(
            scaled_channels(filters, width_multiplier),
            kernel_size,
            activation="relu",
            kernel_initializer=kernel_initializer.clone(),
            bias_initializer="zeros",
            name=layer_name,
            **kwargs,
        )

    images = keras.Input((image_size, image_size, 3), name="images")
    x = images
    outputs = {}
    for block, block_channels in enumerate(VGG16_BLOCKS, start=1):
        if block > 1:
            x = keras.layers.MaxPooling2D(2, padding="same", name=f"pool{block - 1}")(x)
        for index, channels in enumerate(block_channels, start=1):
            x = conv(channels, 3, f"conv{block}_{index}", padding="same")(x)
        if block == 3:
            outputs["conv3_3"] = x
        if block == 4:
            outputs["p1"] = L2Normalization(l2_norm_scale, name="conv4_3_norm")(x)
    x = keras.layers.MaxPooling2D(3, strides=1, padding="same", name="pool5")(x)
    x = conv(1024, 3, "conv6", padding="same", dilation_rate=6)(x)
    x = conv(1024, 1, "conv7")(x)
    outputs["p2"] = x
    for level, (reduced, channels, kernel, stride, padding) in enumerate(SSD_EXTRAS[image_size], start=3):
        block = level + 5
        x = conv(reduced, 1, f"conv{block}_1")(x)
        if padding:
            x = keras.layers.ZeroPadding2D(padding, name=f"conv{block}_2_pad")(x)
        x = conv(channels, kernel, f"conv{block}_2", strides=stride)(x)
        outputs[f"p{level}"] = x
    return images, outputs


def convert_vgg16_weights(vgg16, model, rgb_input=True):
    """Copies a ``keras.applications.VGG16(include_top=True)`` model's weights into
    ``VGG16SSD`` ``model`` (width 1.0): conv1–conv5 as they are, fc6 → conv6 and fc7 → conv7 by
    SSD's subsampling (module docstring). The extra layers and L2Norm are left untouched.

    Args:
        vgg16: the source model, with layers ``block1_conv1`` … ``block5_conv3``, ``fc1``
            (25088 → 4096) and ``fc2`` (4096 → 4096), channels-last.
        model: a ``VGG16SSD`` model with ``width_multiplier=1.0`` (300 or 512).
        rgb_input: reverse conv1_1's input channels so that ``model`` takes RGB where
            ``vgg16`` takes BGR (default True).

    Returns: ``model``.

    Example::

        source = keras.applications.VGG16(include_top=True, weights=None)   # or weights="imagenet"
        trunk = convert_vgg16_weights(source, VGG16SSD(300))
    """
    names = {layer.name for layer in vgg16.layers}
    needed = [f"block{b}_conv{i}" for b, block in enumerate(VGG16_BLOCKS, 1) for i in range(1, len(block) + 1)]
    missing = sorted(set(needed + ["fc1", "fc2"]) - names)
    if missing:
        raise ValueError(
            f"`vgg16` must be keras.applications.VGG16(include_top=True); {vgg16.name!r} lacks {missing}."
        )
    fc6_kernel, fc6_bias = vgg16.get_layer("fc1").get_weights()
    fc7_kernel, fc7_bias = vgg16.get_layer("fc2").get_weights()
    if fc6_kernel.shape != (7 * 7 * 512, 4096) or fc7_kernel.shape != (4096, 4096):
        raise ValueError(
            f"`vgg16`'s fc1/fc2 must be 25088x4096 and 4096x4096, got {fc6_kernel.shape} and {fc7_kernel.shape}."
        )
    if model.get_layer("conv7").filters != 1024:
        raise ValueError(f"`model` must be a VGG16SSD with width_multiplier=1.0 (conv7 has {model.get_layer('conv7').filters} filters).")
    for block, channels in enumerate(VGG16_BLOCKS, start=1):
        for index in range(1, len(channels) + 1):
            kernel, bias = vgg16.get_layer(f"block{block}_conv{index}").get_weights()
            if rgb_input and (block, index) == (1, 1):
                kernel = kernel[:, :, ::-1, :]
            model.get_layer(f"conv{block}_{index}").set_weights([kernel, bias])
    # fc6 flattens pool5 (7, 7, 512) row-major, channels last: it is a 7x7x512x4096 kernel.
    conv6 = fc6_kernel.reshape(7, 7, 512, 4096)[::3, ::3, :, ::4]
    model.get_layer("conv6").set_weights([np.ascontiguousarray(conv6), fc6_bias[::4]])
    conv7 = fc7_kernel[::4, ::4].reshape(1, 1, 1024, 1024)
    model.get_layer("conv7").set_weights([conv7, fc7_bias[::4]])
    return model
