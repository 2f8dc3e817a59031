"""SSD detection head: per-level 3×3 convolutions predicting box regressions and class logits.

Paper: "SSD: Single Shot MultiBox Detector", W. Liu et al., arXiv 1512.02325 (Sec. 2.1,
"convolutional predictors for detection"), as used by NETNet ("Neighbor Erasing and
Transferring Network for Better Single Shot Object Detection", Y. Li et al., CVPR 2020,
arXiv 2001.06690, Sec. 3.4).

For pyramid level l with feature map F_l (B, H_l, W_l, C_l) and A_l anchors per location:

    box_l   = Conv3×3_{C_l → A_l·4}(F_l)    (pad 'same' = 1, bias)
    class_l = Conv3×3_{C_l → A_l·(K + 1)}(F_l)

Channel ``a·4 + c`` of ``box_l`` (``a·(K + 1) + k`` of ``class_l``) at (y, x) is coordinate c
(class column k) of anchor a at that location. Outputs are reshaped and concatenated in level
order, then row-major (y, x), then anchor — the order of ``keras_cvx.ops.anchors.ssd_anchors``:

    box_regression (B, N, 4),   class_logits (B, N, K + 1),   N = Σ_l H_l·W_l·A_l

(8732 at 300 input with ``anchors_per_location`` (4, 6, 6, 6, 4, 4), 24564 at 512 with
(4, 6, 6, 6, 6, 4, 4)). K = ``num_classes`` object classes (80 for COCO, 20 for VOC); the head
adds the background column, index 0 of ``class_logits``, for SSD's softmax. Parameters:
Σ_l 9·C_l·A_l·(4 + K + 1) + A_l·(4 + K + 1).

Choices: Glorot-uniform kernels and zero biases (SSD's xavier init; constructor arguments).
Both outputs have the layer's compute dtype (float16 under ``mixed_float16``); the loss
(``keras_cvx.losses.multibox.MultiBoxLoss``) and the box decoder cast to float32. The head
needs static spatial sizes (SSD's inputs have a fixed size).
"""

import keras
from keras import ops

from keras_cvx.validation import require_positive_int


@keras.saving.register_keras_serializable(package="keras_cvx")
class SSDHead(keras.layers.Layer):
    """SSD box and class predictors over a list of feature maps.

    Paper: "SSD: Single Shot MultiBox Detector", W. Liu et al., https://arxiv.org/abs/1512.02325,
    Sec. 2.1 ("convolutional predictors for detection"), as NETNet
    (https://arxiv.org/abs/2001.06690) uses it: per level a 3×3 conv to ``A_l·4`` box deltas and
    one to ``A_l·(K + 1)`` class logits, concatenated in level, row, column, anchor order (the
    order of ``keras_cvx.ops.ssd_anchors``; module docstring).

    Args:
        num_classes: K object classes (the background column 0 is added: K + 1 logits).
        anchors_per_location: A_l for every level (its length is the number of levels; default
            ``(4, 6, 6, 6, 4, 4)``, SSD300's).
        kernel_size: of the predictor convolutions (default 3, SSD's).
        kernel_initializer, bias_initializer: of the predictor convolutions (default
            Glorot-uniform and zeros, SSD's xavier init).

    Call: ``head(features)`` with ``features`` a list of L NHWC maps ->
    ``{"box_regression": (B, N, 4), "class_logits": (B, N, K + 1)}``, N = Σ_l H_l·W_l·A_l.

    Example:

    >>> import numpy as np
    >>> from keras_cvx.heads import SSDHead
    >>> head = SSDHead(num_classes=3, anchors_per_location=(4, 6))
    >>> out = head([np.ones((1, 4, 4, 8), "float32"), np.ones((1, 2, 2, 16), "float32")])
    >>> tuple(out["box_regression"].shape), tuple(out["class_logits"].shape)   # 4·4·4 + 2·2·6
    ((1, 88, 4), (1, 88, 4))
    """

    _call_takes_sequence = True

    def __init__(
        self,
        num_classes,
        anchors_per_location=(4, 6, 6, 6, 4, 4),
        kernel_size=3,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = require_positive_int("num_classes", num_classes)
        if not isinstance(anchors_per_location, (list, tuple)) or not anchors_per_location:
            raise ValueError(
                f"`anchors_per_location` must be a non-empty list of positive integers, got {anchors_per_location!r}."
            )
        self.anchors_per_location = tuple(
            require_positive_int("anchors_per_location", a) for a in anchors_per_location
        )
        self.kernel_size = require_positive_int("kernel_size", kernel_size)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.box_convs = [self._predictor(a * 4, f"box_conv_{i}") for i, a in enumerate(self.anchors_per_location)]
        self.class_convs = [
            self._predictor(a * (self.num_classes + 1), f"class_conv_{i}") for i, a in enumerate(self.anchors_per_location)
        ]

    def _predictor(self, filters, name):
        return keras.layers.Conv2D(
            filters,
            self.kernel_size,
            padding="same",
            kernel_initializer=self.kernel_initializer.clone(),
            bias_initializer=self.bias_initializer.clone(),
            dtype=self.dtype_policy,
            name=name,
        )

    def _check(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != len(self.anchors_per_location):
            raise ValueError(
                f"`features` must be a list of {len(self.anchors_per_location)} maps (one per entry of "
                f"`anchors_per_location`), got {input_shape}."
            )
        for shape in input_shape:
            if len(shape) != 4 or shape[1] is None or shape[2] is None or shape[3] is None:
                raise ValueError(f"every feature map must be (B, H, W, C) with known H, W, C, got {shape}.")

    def build(self, input_shape):
        self._check(input_shape)
        for shape, box_conv, class_conv in zip(input_shape, self.box_convs, self.class_convs):
            box_conv.build(tuple(shape))
            class_conv.build(tuple(shape))

    def num_anchors(self, input_shape):
        """N = Σ_l H_l·W_l·A_l for the given feature-map shapes."""
        return sum(s[1] * s[2] * a for s, a in zip(input_shape, self.anchors_per_location))

    def call(self, features):
        boxes, logits = [], []
        for feature, anchors, box_conv, class_conv in zip(
            features, self.anchors_per_location, self.box_convs, self.class_convs
        ):
            count = feature.shape[1] * feature.shape[2] * anchors
            boxes.append(ops.reshape(box_conv(feature), (-1, count, 4)))
            logits.append(ops.reshape(class_conv(feature), (-1, count, self.num_classes + 1)))
        return {
            "box_regression": ops.concatenate(boxes, axis=1),
            "class_logits": ops.concatenate(logits, axis=1),
        }

    def compute_output_shape(self, input_shape):
        self._check(input_shape)
        batch, count = input_shape[0][0], self.num_anchors(input_shape)
        return {"box_regression": (batch, count, 4), "class_logits": (batch, count, self.num_classes + 1)}

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            anchors_per_location=list(self.anchors_per_location),
            kernel_size=self.kernel_size,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
        )
        return config
