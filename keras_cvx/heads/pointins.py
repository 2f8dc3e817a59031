"""PointINS mask head: decodes each potential instance's instance-aware feature into a
28 x 28 class-agnostic mask logit map.

Paper: "PointINS: Point-based Instance Segmentation", L. Qi, X. Zhang, Y. Chen, Y. Chen,
J. Sun, J. Jia, arXiv 2003.06148 (v1 2020; TPAMI 2021). The paper says the instance-aware
feature ``F_{p,a}`` (``k x k x C``, from ``keras_cvx.layers.instance_aware_conv``) is decoded by
a mask head and that PointINS is "comparable to Mask R-CNN"; the head's design is not
available to us. Everything below is inferred: a Mask R-CNN-style decoder (Mask R-CNN,
arXiv 1703.06870, Fig. 4 right; Detectron2 ``MaskRCNNConvUpsampleHead``) after a bilinear
resize of the ``k x k`` feature to the usual 14 x 14 RoI size::

    x = resize_bilinear(F_{p,a}, resize x resize)          skipped when k == resize
    x = [Conv3x3_{channels} -> ReLU] x num_convs (x)
    x = ReLU(ConvTranspose2x2_{channels, stride 2}(x))     2 resize x 2 resize
    logits = Conv1x1_{1}(x)[..., 0]                        [P, 2 resize, 2 resize]

Initialisation as Mask R-CNN/Detectron2: the 3x3 convs and the transposed conv Kaiming-normal
with fan_out (``c2_msra_fill``; here ``VarianceScaling(2.0, "fan_out", "untruncated_normal")``,
PyTorch's untruncated normal; Keras's fan_out of a ``Conv2DTranspose`` kernel
``[2, 2, out, in]`` is ``4 in``, PyTorch's fan_out of a ``ConvTranspose2d`` weight
``[in, out, 2, 2]`` is the same ``4 in``), the predictor N(0, 0.001), every bias 0.

Parameters with 256 input channels and the defaults:
4 (256 · 256 · 9 + 256) + (256 · 256 · 4 + 256) + 257 = 2,622,977.
"""

import keras
from keras import ops

from keras_cvx.validation import require_positive_int


def _kaiming_fan_out():
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


@keras.saving.register_keras_serializable(package="keras_cvx")
class PointINSMaskHead(keras.layers.Layer):
    """Mask R-CNN-style decoder of PointINS instance-aware features into 28 x 28 mask logits
    (arXiv 2003.06148; design inferred, see the module docstring).

    Args:
        resize: side the ``k x k`` input is bilinearly resized to (half-pixel centres, no
            antialiasing) before the convs (default 14; skipped when the input is already
            ``resize x resize``). The output is ``2 resize x 2 resize``.
        num_convs: 3x3 conv + ReLU blocks (default 4; 0 allowed).
        channels: width of the convs and of the transposed conv (default 256).

    Call: ``head(features [P, k, k, C])`` -> logits ``[P, 2 resize, 2 resize]`` (one
    class-agnostic channel, squeezed) in the compute dtype.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.heads.pointins import PointINSMaskHead
    >>> head = PointINSMaskHead(resize=7, num_convs=1, channels=8)
    >>> tuple(head(np.ones((5, 3, 3, 4), "float32")).shape)
    (5, 14, 14)
    >>> PointINSMaskHead().compute_output_shape((100, 3, 3, 256))
    (100, 28, 28)
    """

    def __init__(self, resize=14, num_convs=4, channels=256, **kwargs):
        super().__init__(**kwargs)
        self.resize = require_positive_int("resize", resize)
        if isinstance(num_convs, bool) or not isinstance(num_convs, int) or num_convs < 0:
            raise ValueError(f"`num_convs` must be a non-negative integer, got {num_convs!r}.")
        self.num_convs = num_convs
        self.channels = require_positive_int("channels", channels)
        self.convs = [
            keras.layers.Conv2D(self.channels, 3, padding="same", activation="relu",
                                kernel_initializer=_kaiming_fan_out(), dtype=self.dtype_policy, name=f"mask_fcn{i + 1}")
            for i in range(self.num_convs)
        ]
        self.deconv = keras.layers.Conv2DTranspose(self.channels, 2, strides=2, activation="relu",
                                                   kernel_initializer=_kaiming_fan_out(), dtype=self.dtype_policy,
                                                   name="deconv")
        self.predictor = keras.layers.Conv2D(1, 1, kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
                                             dtype=self.dtype_policy, name="predictor")

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 4 or None in input_shape[1:]:
            raise ValueError(f"`features` must be [P, k, k, C] with known k and C, got shape {input_shape}.")
        if input_shape[1] != input_shape[2]:
            raise ValueError(f"`features` must be square templates [P, k, k, C], got shape {input_shape}.")
        shape = (input_shape[0], self.resize, self.resize, input_shape[3])
        for layer in self.convs + [self.deconv, self.predictor]:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def call(self, features):
        x = features
        if tuple(x.shape[1:3]) != (self.resize, self.resize):
            x = ops.image.resize(x, (self.resize, self.resize), interpolation="bilinear")
        for conv in self.convs:
            x = conv(x)
        return self.predictor(self.deconv(x))[..., 0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * self.resize, 2 * self.resize)

    def get_config(self):
        config = super().get_config()
        config.update(resize=self.resize, num_convs=self.num_convs, channels=self.channels)
        return config
