"""SavedModel export of a keras_cvx detector for TF Serving, with ``keras.export.ExportArchive``.

``export_saved_model(model, path, image_size)`` writes two signatures around
``model.predict_step(images)`` (images float32 ``[B, image_size..., 3]`` in 0..255; it
returns ``boxes`` ``[B, N, 4]`` ``xyxy`` pixels of the model input, ``scores`` ``[B, N]``,
``classes`` ``[B, N]`` int32 with -1 padding, ``num_detections`` ``[B]`` and optionally
``masks`` ``[B, N, h, w]``; decoding and NMS are inside the model):

- ``serving_default``: ``images`` uint8 ``[B, H, W, 3]``, any ``H, W``.
- ``image_bytes``: ``image_bytes`` string ``[B]`` of encoded JPEG/PNG/BMP/GIF images, each
  of any size (decoded to 3 channels).

Each image is resized keeping its aspect ratio and zero-padded at the bottom/right to
``image_size`` (``keras_cvx.data.transforms.resize_and_pad``, the training resize). Outputs,
named as TF Model Garden's detection contract:

- ``detection_boxes`` float32 ``[B, N, 4]``: ``[ymin, xmin, ymax, xmax]`` normalised to
  ``[0, 1]`` by the original image's height and width (the TF Object Detection API
  convention, Model Garden's ``output_normalized_coordinates=True``), clipped to the
  image; with ``normalized_coordinates=False``, the same order in original-image pixels
  (Model Garden's default). Padding rows are zeros.
- ``detection_scores`` float32 ``[B, N]`` (0 on padding rows).
- ``detection_classes`` float32 ``[B, N]`` (float as in Model Garden); the model's class
  ids, -1 on padding rows (Model Garden pads with 0; here 0 is a real class).
- ``num_detections`` int32 ``[B]``.
- ``image_info`` float32 ``[B, 4, 2]``: Model Garden's ``[[H, W], [out_h, out_w],
  [scale_y, scale_x], [0, 0]]`` per image.
- ``detection_masks`` float32 ``[B, N, h, w]`` for instance models. Full-image masks (masks
  whose ``h, w`` are the model's ``image_size``, as ``CondInst`` returns) are mapped to the
  original image: cropped to the resized image inside the padded input, resized bilinearly
  to the original ``H x W`` and thresholded at 0.5 (``>= 0.5``) -> 0/1 at the original resolution,
  ``[B, N, H, W]`` (``image_bytes``: the largest ``H, W`` of the batch, each image's masks
  zero-padded at the bottom/right). We keep full-image masks rather than Model Garden's
  box-cropped ``[N, 28, 28]`` masks because CondInst's masks are not tied to their boxes
  (AdelaiDet does not crop them either) and a client then needs no paste-back step. Other
  masks (e.g. at a stride of the input) are returned as ``predict_step`` gives them, in the
  model's frame (``image_info`` maps them to the original image). ``mask_resolution``
  chooses: ``"auto"`` (default, as just said), ``"original"`` or ``"model"``. Difference from
  CondInst's ``postprocess`` (arXiv 2003.05664 as released in AdelaiDet): that resizes the
  mask probabilities and thresholds once; here the 0/1 masks of ``predict_step`` (thresholded
  at the input resolution) are resized, so boundaries can move by up to one input pixel.

Requests are checked inside the graph: an empty batch, an image with zero height or
width, or bytes that do not decode raise ``InvalidArgumentError`` with a message saying
so, as does a wrong rank or channel count (the signatures declare unknown rank so
that this check, not a shape error deep in the graph, answers); a wrong dtype is refused
by the signature itself. A failed request leaves no
state behind, so the model keeps answering good requests.
"""

import keras
import tensorflow as tf

from keras_cvx.data.transforms import resize_and_pad


def _prepare(image, image_size):
    """uint8 ``[H, W, 3]`` -> (float32 padded model input, scale, original ``[H, W]``)."""
    shape = tf.shape(image)[:2]
    with tf.control_dependencies(
        [tf.debugging.assert_positive(shape, message="every image must have a positive height and width")]
    ):
        padded, scale = resize_and_pad(image, image_size)
    return padded, scale, tf.cast(shape, tf.float32)


def _checked(tensor, rank, channels, message):
    """Run-time rank/channel and non-empty batch checks. The signatures accept any rank so
    that a bad request gets ``message`` instead of a shape error deep inside the graph; the
    ``tf.cond`` keeps shape inference (which may see the request's shape) away from the
    reshape when the request is bad."""
    dims = tf.concat([tf.shape(tensor), tf.ones([rank], tf.int32)], axis=0)[:rank]
    ok = tf.equal(tf.rank(tensor), rank)
    if channels:
        ok = tf.logical_and(ok, tf.equal(dims[-1], channels))
    with tf.control_dependencies([tf.debugging.Assert(ok, [message])]):
        fallback = tf.zeros([1] * (rank - 1) + [channels or 1], tensor.dtype)
        tensor = tf.cond(ok, lambda: tf.reshape(tensor, dims), lambda: fallback)
    with tf.control_dependencies(
        [tf.debugging.assert_positive(tf.shape(tensor)[0], message="empty batch: send at least one image")]
    ):
        return tf.ensure_shape(tf.identity(tensor), [None] * (rank - 1) + [channels or None])


class _Serving:
    """The two signature bodies over one model (a plain object; ``ExportArchive`` tracks the
    model and saves the ``tf.function`` endpoints)."""

    def __init__(self, model, image_size, normalized_coordinates, mask_resolution="auto"):
        self.model = model
        self.image_size = image_size
        self.normalized_coordinates = normalized_coordinates
        self.mask_resolution = mask_resolution

    def detect_images(self, images):
        images = _checked(images, 4, 3, "`images` must be uint8 [batch, height, width, 3]")
        return self._detect(*self._prepare_each(lambda image: image, images))

    def detect_bytes(self, image_bytes):
        image_bytes = _checked(image_bytes, 1, None, "`image_bytes` must be a string vector [batch]")

        def decode(data):
            return tf.io.decode_image(data, channels=3, expand_animations=False)

        return self._detect(*self._prepare_each(decode, image_bytes))

    def _prepare_each(self, to_image, elements):
        """``(padded, scales, sizes)`` from ``_prepare(to_image(element))`` for each element."""
        return tf.map_fn(
            lambda element: _prepare(to_image(element), self.image_size),
            elements,
            fn_output_signature=(
                tf.TensorSpec([*self.image_size, 3], tf.float32),
                tf.TensorSpec([], tf.float32),
                tf.TensorSpec([2], tf.float32),
            ),
        )

    def _detect(self, padded, scales, sizes):
        outputs = self.model.predict_step(padded)
        classes = tf.cast(outputs["classes"], tf.int32)
        valid = classes >= 0
        boxes = tf.cast(outputs["boxes"], tf.float32) / scales[:, None, None]
        height, width = sizes[:, 0, None], sizes[:, 1, None]
        x1, y1, x2, y2 = tf.unstack(boxes, 4, axis=-1)
        x1, x2 = tf.clip_by_value(x1, 0.0, width), tf.clip_by_value(x2, 0.0, width)
        y1, y2 = tf.clip_by_value(y1, 0.0, height), tf.clip_by_value(y2, 0.0, height)
        if self.normalized_coordinates:
            x1, x2, y1, y2 = x1 / width, x2 / width, y1 / height, y2 / height
        boxes = tf.where(valid[..., None], tf.stack([y1, x1, y2, x2], axis=-1), 0.0)
        out_size = tf.constant(self.image_size, tf.float32)
        batch = tf.shape(padded)[0]
        image_info = tf.stack(
            [
                sizes,
                tf.tile(out_size[None], [batch, 1]),
                tf.stack([scales, scales], axis=-1),
                tf.zeros([batch, 2], tf.float32),
            ],
            axis=1,
        )
        result = {
            "detection_boxes": boxes,
            "detection_scores": tf.where(valid, tf.cast(outputs["scores"], tf.float32), 0.0),
            "detection_classes": tf.cast(tf.where(valid, classes, -1), tf.float32),
            "num_detections": tf.cast(outputs["num_detections"], tf.int32),
            "image_info": image_info,
        }
        if "masks" in outputs:
            masks = tf.cast(outputs["masks"], tf.float32)
            full_image = tuple(masks.shape[-2:]) == tuple(self.image_size)
            if self.mask_resolution == "original" or (self.mask_resolution == "auto" and full_image):
                masks = _masks_to_original(masks, scales, sizes, self.image_size)
            result["detection_masks"] = masks
        return result


def _masks_to_original(masks, scales, sizes, image_size):
    """Full-image masks ``[B, N, out_h, out_w]`` of the padded model input -> 0/1 float32
    ``[B, N, max H, max W]`` at each image's original size (zero-padded to the batch's largest)."""
    if tuple(masks.shape[-2:]) != tuple(image_size):
        raise ValueError(f"mask_resolution='original' needs masks of the input size {image_size}, got {masks.shape}.")
    sizes = tf.cast(sizes, tf.int32)
    max_h, max_w = tf.reduce_max(sizes[:, 0]), tf.reduce_max(sizes[:, 1])

    def one(args):
        image_masks, scale, size = args
        original = tf.cast(size, tf.float32)
        # the resized image's extent inside the padded input, as transforms.resize_and_pad rounds it
        new_h = tf.clip_by_value(tf.cast(tf.round(original[0] * scale), tf.int32), 1, image_size[0])
        new_w = tf.clip_by_value(tf.cast(tf.round(original[1] * scale), tf.int32), 1, image_size[1])
        cropped = image_masks[:, :new_h, :new_w, None]
        resized = tf.image.resize(cropped, size, method="bilinear")[..., 0]
        binary = tf.cast(resized >= 0.5, tf.float32)
        return tf.pad(binary, [[0, 0], [0, max_h - size[0]], [0, max_w - size[1]]])

    return tf.map_fn(one, (masks, scales, sizes),
                     fn_output_signature=tf.TensorSpec([masks.shape[1], None, None], tf.float32))


def export_saved_model(model, path, image_size, normalized_coordinates=True, mask_resolution="auto"):
    """Writes ``model`` as a SavedModel with the ``serving_default`` and ``image_bytes``
    signatures (see the module docstring) and returns ``path``.

    Args:
        model: a built detector whose ``predict_step(images)`` follows the keras_cvx contract.
        path: output directory (for TF Serving: ``<model_base_path>/<version>``).
        image_size: ``(height, width)``, the model's fixed input size.
        normalized_coordinates: ``detection_boxes`` normalised to ``[0, 1]`` (default) or
            in original-image pixels; ``[ymin, xmin, ymax, xmax]`` either way.
        mask_resolution: ``detection_masks`` at the original image size (``"original"``; the
            model's masks must cover its whole input), as ``predict_step`` returns them
            (``"model"``), or ``"auto"`` (default): original for full-image masks.
    """
    if mask_resolution not in ("auto", "original", "model"):
        raise ValueError(f"`mask_resolution` must be 'auto', 'original' or 'model', got {mask_resolution!r}.")
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in image_size)
    ):
        raise ValueError(f"`image_size` must be (height, width) positive integers, got {image_size!r}.")
    image_size = tuple(image_size)
    if not model.built:
        raise ValueError("`model` must be built (call it once on a batch) before export.")
    serving = _Serving(model, image_size, bool(normalized_coordinates), mask_resolution)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        tf.function(serving.detect_images),
        input_signature=[tf.TensorSpec(None, tf.uint8, name="images")],
    )
    archive.add_endpoint(
        "image_bytes",
        tf.function(serving.detect_bytes),
        input_signature=[tf.TensorSpec(None, tf.string, name="image_bytes")],
    )
    archive.write_out(path, verbose=False)
    return path
