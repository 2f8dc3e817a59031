"""Geometric transforms for the input pipeline, in TensorFlow (they run inside ``tf.data``
and inside the serving signature of an exported SavedModel).

- ``resize_and_pad``: keep-aspect resize then zero padding at the bottom/right, the
  resize used by every detector here (as TF Model Garden's ``resize_and_crop_image``
  without the random jitter).
- ``horizontal_flip``: flips an image and its ``xyxy`` pixel boxes.
- ``scale_boxes`` / ``clip_boxes``: box arithmetic used to carry boxes through the resize.

Boxes are ``xyxy`` in absolute pixels, float32.
"""

import tensorflow as tf


def resize_and_pad(image, output_size):
    """Resizes ``image`` keeping its aspect ratio and pads it to ``output_size``.

    ``scale = min(out_h / H, out_w / W)``; the image is resized bilinearly to
    ``(round(H * scale), round(W * scale))`` and padded with zeros at the bottom and right.

    Args:
        image: uint8 or float tensor ``[H, W, C]`` (floats are taken to be in 0..255).
        output_size: ``(out_h, out_w)`` Python ints.

    Returns:
        ``(padded, scale)``: float32 ``[out_h, out_w, C]`` in 0..255 and the float32 scalar
        ``scale``; a pixel coordinate ``p`` of the input is ``p * scale`` in ``padded``.
    """
    out_h, out_w = _output_size(output_size)
    image = tf.convert_to_tensor(image)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.minimum(out_h / shape[0], out_w / shape[1])
    new_h = tf.clip_by_value(tf.cast(tf.round(shape[0] * scale), tf.int32), 1, out_h)
    new_w = tf.clip_by_value(tf.cast(tf.round(shape[1] * scale), tf.int32), 1, out_w)
    # bilinear resize reads uint8 directly and computes in float32 (the values of resizing a
    # float32 copy), so no full-size float32 copy of a large image is made
    resized = tf.cast(tf.image.resize(image, tf.stack([new_h, new_w]), method="bilinear"), tf.float32)
    resized = tf.clip_by_value(resized, 0.0, 255.0)
    padded = tf.pad(resized, [[0, out_h - new_h], [0, out_w - new_w], [0, 0]])
    padded = tf.ensure_shape(padded, [out_h, out_w, image.shape[-1]])
    return padded, scale


def horizontal_flip(image, boxes):
    """Mirrors ``image`` ``[H, W, C]`` left-right and its boxes ``[N, 4]`` (``xyxy`` pixels
    of that image): ``x1' = W - x2``, ``x2' = W - x1``. Returns ``(image, boxes)``."""
    image = tf.convert_to_tensor(image)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    x1, y1, x2, y2 = tf.unstack(boxes, 4, axis=-1)
    flipped = tf.stack([width - x2, y1, width - x1, y2], axis=-1)
    return tf.reverse(image, axis=[1]), flipped


def scale_boxes(boxes, scale):
    """Multiplies ``xyxy`` pixel boxes ``[..., 4]`` by the scalar (or broadcastable) ``scale``."""
    return tf.convert_to_tensor(boxes, tf.float32) * tf.cast(scale, tf.float32)


def clip_boxes(boxes, image_size):
    """Clips ``xyxy`` pixel boxes ``[..., 4]`` to the image ``[0, width] x [0, height]``;
    ``image_size = (height, width)`` (numbers or tensors). The ``tf.data`` twin of
    ``keras_cvx.ops.clip_boxes``, with the same signature."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    height, width = (tf.cast(v, tf.float32) for v in image_size)
    x1, y1, x2, y2 = tf.unstack(boxes, 4, axis=-1)
    return tf.stack(
        [
            tf.clip_by_value(x1, 0.0, width),
            tf.clip_by_value(y1, 0.0, height),
            tf.clip_by_value(x2, 0.0, width),
            tf.clip_by_value(y2, 0.0, height),
        ],
        axis=-1,
    )


def _output_size(output_size):
    if (
        not isinstance(output_size, (tuple, list))
        or len(output_size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in output_size)
    ):
        raise ValueError(
            f"`output_size` must be a pair of positive integers (height, width), got {output_size!r}."
        )
    return int(output_size[0]), int(output_size[1])
