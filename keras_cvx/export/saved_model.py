"""SavedModel export of a keras_cvx detector for TF Serving, with ``keras.export.ExportArchive``.

``export_saved_model(model, path, image_size)`` writes two signatures around
``model.predict_step(images)`` (images float32 ``[B, image_size..., 3]`` in 0..255; it
returns ``boxes`` ``[B, N, 4]`` ``xyxy`` pixels of the model input, ``scores`` ``[B, N]``,
``classes`` ``[B, N]`` int32 with -1 padding, ``num_detections`` ``[B]`` and optionally
``masks`` ``[B, N, h, w]``; decoding and NMS are inside the model):

- ``serving_default``: ``images`` uint8 ``[B, H, W, 3]``, any ``H, W``.
- ``image_bytes``: ``image_bytes`` string ``[B]`` of encoded JPEG/PNG/BMP/GIF images, each
  of any size up to ``max_pixels`` (set at export, 40,000,000 by default; decoded to 3
  channels).

Serving limits of ``image_bytes``: each image's width and height are read from its headers
inside the graph before anything is decoded, and an image above ``max_pixels`` is refused
(``image 2 of the batch: 16000x16000 pixels (width x height) is above the limit of 40000000
set at export (max_pixels)``), so a small file that declares a huge image (a 0.75 MB PNG of
16000 x 16000 pixels decodes to 768 MB) costs almost nothing. The headers read:

- PNG: IHDR, big-endian 32-bit width and height at bytes 16..24.
- JPEG: the first SOFn segment (height, width), found by walking the marker segments.
- BMP: little-endian int32 width at byte 18 and height at 22 (its sign ignored), as
  TensorFlow's BMP decoder reads them.
- GIF: not the logical screen (bytes 6..10), which TensorFlow's GIF decoder ignores, but
  every frame's image descriptor, found by walking the blocks: that decoder's canvas is the
  largest frame width x the largest frame height, and it reads every frame (one byte a
  pixel) even when only the first is returned. The pixels counted for a GIF are the larger
  of its canvas and all its frames' pixels together; a GIF of more than 131,072 blocks and
  sub-blocks (about 33 MB) is refused as malformed rather than walked further.

Bytes that start with none of these four signatures (WebP and JPEG XL included, which
``tf.io.decode_image`` would decode) and truncated or malformed headers are refused too,
naming the image's index in the batch. ``serving_default`` has no such limit: its tensor is
already in memory and, since images are resized from uint8 (below), a request costs little
more than its own size.

Each image is resized keeping its aspect ratio and zero-padded at the bottom/right to
``image_size`` (``keras_cvx.data.transforms.resize_and_pad``, the training resize, which
resizes the uint8 image directly: no full-size float32 copy is made; ``serving_default``
resizes its batch, whose images share one size, in one call, with the values of resizing
each image alone). The ONNX export (``keras_cvx.export.onnx``) is built from the same
functions. Outputs, named as TF Model Garden's detection contract:

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
width, bytes that are not a PNG/JPEG/GIF/BMP image, a truncated header, an image above
``max_pixels`` or bytes that do not decode raise ``InvalidArgumentError`` with a message
saying so (for the header checks, with the image's index in the batch), as does a wrong
rank or channel count (the signatures declare unknown rank so that this check, not a shape
error deep in the graph, answers); a wrong dtype is refused by the signature itself. A
failed request leaves no state behind, so the model keeps answering good requests.
"""

import keras
import tensorflow as tf

from keras_cvx.data.transforms import resize_and_pad
from keras_cvx.validation import require_positive_int

# (name, signatures) of the formats whose size is read from the header, in _header_size's order
_FORMATS = (
    ("PNG", (b"\x89PNG\r\n\x1a\n",)),
    ("JPEG", (b"\xff\xd8\xff",)),
    ("GIF", (b"GIF87a", b"GIF89a")),
    ("BMP", (b"BM",)),
)
_HEAD = 32  # header bytes read for PNG/BMP
_JPEG_MAX_SEGMENTS = 1024  # marker segments (and fill bytes) walked before the SOFn is given up
_GIF_MAX_BLOCKS = 1 << 17  # GIF blocks and sub-blocks walked at most (~33 MB of 255-byte sub-blocks)


def _prepare(image, image_size):
    """uint8 ``[H, W, 3]`` -> (float32 padded model input, scale, original ``[H, W]``)."""
    shape = tf.shape(image)[:2]
    with tf.control_dependencies(
        [tf.debugging.assert_positive(shape, message="every image must have a positive height and width")]
    ):
        padded, scale = resize_and_pad(image, image_size)
    return padded, scale, tf.cast(shape, tf.float32)


def _prepare_batch(images, image_size):
    """``[B, H, W, C]`` images of one size (uint8, or float in 0..255) -> ``(padded`` float32
    ``[B, out_h, out_w, C]``, ``scales [B]``, original sizes ``[B, 2])``: ``_prepare`` of every
    image, done once for the batch. The images are laid side by side as the channels of one
    ``[H, W, B * C]`` image, which the bilinear resize treats channel by channel, so the values
    are bitwise those of resizing each image alone (no ``tf.map_fn`` loop)."""
    shape = tf.shape(images)
    batch, channels = shape[0], images.shape[-1]
    stacked = tf.reshape(tf.transpose(images, [1, 2, 0, 3]), tf.stack([shape[1], shape[2], batch * channels]))
    padded, scale, size = _prepare(stacked, image_size)
    padded = tf.transpose(tf.reshape(padded, [*image_size, batch, channels]), [2, 0, 1, 3])
    return padded, tf.fill([batch], scale), tf.tile(size[None], [batch, 1])


def _header_size(data):
    """``(format index into _FORMATS (len(_FORMATS) = none), header complete, height, width,
    pixels decoded)`` (int64; pixels float64) of the encoded image ``data``, read from its
    headers without decoding it."""
    length = tf.cast(tf.strings.length(data), tf.int64)
    byte = _bytes_at(data, 0, _HEAD)

    def number(start, count, big_endian):
        order = range(count) if big_endian else reversed(range(count))
        value = tf.constant(0, tf.int64)
        for k in order:
            value = value * 256 + byte[start + k]
        return value

    def signed_abs(value):  # |int32| of an unsigned 32-bit value
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    def still(complete, height, width):  # one frame: height x width pixels
        return complete, height, width, tf.cast(height, tf.float64) * tf.cast(width, tf.float64)

    kind = tf.constant(len(_FORMATS), tf.int32)
    for index in reversed(range(len(_FORMATS))):
        match = tf.reduce_any([tf.equal(tf.strings.substr(data, 0, len(s)), s) for s in _FORMATS[index][1]])
        kind = tf.where(match, index, kind)
    ihdr = tf.reduce_all(tf.equal(byte[12:16], tf.constant(list(b"IHDR"), tf.int64)))
    branches = [
        lambda: still((length >= 24) & ihdr, number(20, 4, True), number(16, 4, True)),  # PNG IHDR first
        lambda: still(*_jpeg_size(data, length)),
        lambda: _gif_size(data, length),
        lambda: still(length >= 26, signed_abs(number(22, 4, False)), signed_abs(number(18, 4, False))),  # BMP
        lambda: still(tf.constant(False), tf.constant(0, tf.int64), tf.constant(0, tf.int64)),
    ]
    complete, height, width, pixels = tf.switch_case(kind, branches)
    return kind, complete, height, width, pixels


def _bytes_at(data, pos, count):
    """int64 ``[count]``: bytes ``pos .. pos + count`` of ``data`` (``pos <= len(data)``),
    zeros past its end."""
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(data, pos, count), b"\0" * count]), 0, count)
    return tf.cast(tf.reshape(tf.io.decode_raw(head, tf.uint8), [count]), tf.int64)


def _gif_size(data, length):
    """``(found a frame, height, width, pixels decoded)`` of GIF ``data``. TensorFlow's GIF
    decoder ignores the logical screen size: its canvas is the largest frame width x the
    largest frame height, and it reads every frame (one byte a pixel) even when only the
    first is returned, so every image descriptor is visited, walking the blocks (an
    extension or the image data is a chain of sub-blocks, each a size byte and that many
    bytes, ended by a 0) until the trailer, the end of the data or an unknown block. Pixels
    decoded: the largest of the canvas and the frames' pixels together."""
    raw = tf.concat([tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int64), tf.zeros([16], tf.int64)], 0)
    table = tf.where(raw[10] >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), raw[10] % 8), 0)
    offsets = tf.range(10, dtype=tf.int64)

    def skip_chain(pos, left):
        """Past the sub-blocks starting at ``pos`` and their 0 terminator, and the budget left."""
        def more(p, left):
            return (left > 0) & (p < length) & tf.not_equal(raw[tf.minimum(p, length)], 0)

        end, left = tf.while_loop(more, lambda p, left: (p + 1 + raw[p], left - 1), (pos, left))
        return end + 1, tf.where(more(end, tf.constant(1, tf.int64)), tf.constant(-1, tf.int64), left)

    def block(pos, left, frames, height, width, pixels, done):
        seg = tf.gather(raw, pos + offsets)
        image, extension = tf.equal(seg[0], 0x2C), tf.equal(seg[0], 0x21)
        frame_w, frame_h = seg[5] + 256 * seg[6], seg[7] + 256 * seg[8]
        local = tf.where(seg[9] >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), seg[9] % 8), 0)
        # image: descriptor, local colour table, LZW code size byte, data; extension: 0x21, label, data
        chain = tf.where(image, pos + 11 + local, pos + 2)
        done = tf.logical_not(image | extension)  # the trailer 0x3B or an unknown block
        pos, left = tf.cond(done, lambda: (pos, left), lambda: skip_chain(chain, left - 1))
        frames += tf.cast(image, tf.int64)
        pixels += tf.where(image, tf.cast(frame_w * frame_h, tf.float64), 0.0)
        height = tf.where(image, tf.maximum(height, frame_h), height)
        width = tf.where(image, tf.maximum(width, frame_w), width)
        return pos, left, frames, height, width, pixels, done

    zero = tf.constant(0, tf.int64)
    pos, left, frames, height, width, pixels, done = tf.while_loop(
        lambda pos, left, frames, height, width, pixels, done: tf.logical_not(done) & (pos < length) & (left >= 0),
        block,
        (13 + table, tf.constant(_GIF_MAX_BLOCKS, tf.int64), zero, zero, zero, tf.constant(0.0, tf.float64),
         tf.constant(False)),
    )
    canvas = tf.cast(height, tf.float64) * tf.cast(width, tf.float64)
    # walked to the end within the budget (left is -1 once a chain was cut short)
    complete = (length >= 13) & (frames > 0) & (done | (pos >= length)) & (left >= 0)
    return complete, height, width, tf.maximum(canvas, pixels)


def _jpeg_size(data, length):
    """``(found, height, width)`` from the first SOFn segment of JPEG ``data``, walking the
    marker segments after SOI (``FF xx`` + big-endian length; fill bytes ``FF`` and the
    standalone markers TEM/RSTn skipped). SOF0..SOF15 are the markers C0..CF except DHT (C4),
    JPG (C8) and DAC (CC); their height is at offset 5 and width at 7 (16-bit big-endian)."""

    def walk(pos, found, height, width):
        seg = _bytes_at(data, pos, 9)
        marker = seg[1]
        is_sof = (marker >= 0xC0) & (marker <= 0xCF) & tf.logical_not(
            tf.equal(marker, 0xC4) | tf.equal(marker, 0xC8) | tf.equal(marker, 0xCC)
        )
        standalone = tf.equal(marker, 0x01) | ((marker >= 0xD0) & (marker <= 0xD8))
        segment = seg[2] * 256 + seg[3]
        # not a marker, EOI/SOS before any SOF, or a segment shorter than its length field: stop
        broken = tf.not_equal(seg[0], 0xFF) | tf.equal(marker, 0xD9) | tf.equal(marker, 0xDA)
        broken |= tf.logical_not(is_sof | standalone | tf.equal(marker, 0xFF)) & (segment < 2)
        one, two = tf.constant(1, tf.int64), tf.constant(2, tf.int64)
        step = tf.where(tf.equal(marker, 0xFF), one, tf.where(standalone, two, 2 + segment))
        pos = tf.where(broken, length, tf.where(is_sof, pos, pos + step))
        found = is_sof & tf.logical_not(broken)
        return pos, found, tf.where(found, seg[5] * 256 + seg[6], height), tf.where(found, seg[7] * 256 + seg[8], width)

    zero = tf.constant(0, tf.int64)
    _, found, height, width = tf.while_loop(
        lambda pos, found, height, width: tf.logical_not(found) & (pos + 9 <= length),
        walk,
        (tf.constant(2, tf.int64), tf.constant(False), zero, zero),
        maximum_iterations=_JPEG_MAX_SEGMENTS,
    )
    return found, height, width


@tf.autograph.experimental.do_not_convert  # explicit tf control flow only: no conversion (faster export)
def _decode_checked(data, index, max_pixels):
    """uint8 ``[H, W, 3]`` of encoded ``data``, image ``index`` of the batch; its format, header
    and size (pixels decoded ``<= max_pixels``) are checked from its headers before it is
    decoded."""
    kind, complete, height, width, pixels = _header_size(data)
    prefix = tf.strings.join(["image ", tf.strings.as_string(index), " of the batch: "])
    names = tf.constant([name for name, _ in _FORMATS] + ["?"])
    known = tf.debugging.Assert(
        kind < len(_FORMATS), [tf.strings.join([prefix, "not a PNG, JPEG, GIF or BMP image (unknown signature)"])]
    )
    with tf.control_dependencies([known]):
        header = tf.debugging.Assert(
            complete & (height > 0) & (width > 0),
            [tf.strings.join([prefix, "truncated or malformed ", tf.gather(names, kind), " header"])],
        )
    with tf.control_dependencies([header]):
        size = tf.strings.join([tf.strings.as_string(width), "x", tf.strings.as_string(height)])
        frames = tf.strings.join([", ", tf.strings.as_string(pixels, precision=0), " in all its GIF frames,"])
        single = tf.equal(pixels, tf.cast(height, tf.float64) * tf.cast(width, tf.float64))
        limit = tf.debugging.Assert(
            pixels <= max_pixels,
            [tf.strings.join([prefix, size, " pixels (width x height)", tf.where(single, "", frames),
                              f" is above the limit of {max_pixels} set at export (max_pixels)"])],
        )
    with tf.control_dependencies([limit]):
        return tf.io.decode_image(data, channels=3, expand_animations=False)


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

    def __init__(self, model, image_size, normalized_coordinates, mask_resolution="auto", max_pixels=40_000_000):
        self.model = model
        self.image_size = image_size
        self.normalized_coordinates = normalized_coordinates
        self.mask_resolution = mask_resolution
        self.max_pixels = max_pixels

    def detect_images(self, images):
        images = _checked(images, 4, 3, "`images` must be uint8 [batch, height, width, 3]")
        return self.detect_batch(images)

    def detect_batch(self, images):
        """Outputs for ``images`` ``[B, H, W, 3]`` (uint8, or float in 0..255), unchecked."""
        return self._detect(*_prepare_batch(images, self.image_size), same_size=True)

    def detect_bytes(self, image_bytes):
        image_bytes = _checked(image_bytes, 1, None, "`image_bytes` must be a string vector [batch]")

        def decode(data, index):
            return _decode_checked(data, index, self.max_pixels)

        return self._detect(*self._prepare_each(decode, image_bytes))

    def _prepare_each(self, to_image, elements):
        """``(padded, scales, sizes)`` from ``_prepare(to_image(element, index))`` for each element."""
        return tf.map_fn(
            lambda args: _prepare(to_image(args[1], args[0]), self.image_size),
            (tf.range(tf.shape(elements)[0]), elements),
            fn_output_signature=(
                tf.TensorSpec([*self.image_size, 3], tf.float32),
                tf.TensorSpec([], tf.float32),
                tf.TensorSpec([2], tf.float32),
            ),
        )

    def _detect(self, padded, scales, sizes, same_size=False):
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
                masks = _masks_to_original(masks, scales, sizes, self.image_size, same_size)
            result["detection_masks"] = masks
        return result


def _masks_to_original(masks, scales, sizes, image_size, same_size=False):
    """Full-image masks ``[B, N, out_h, out_w]`` of the padded model input -> 0/1 float32
    ``[B, N, max H, max W]`` at each image's original size (zero-padded to the batch's largest);
    ``same_size``: every image of the batch has the same original size (one resize for all)."""
    if tuple(masks.shape[-2:]) != tuple(image_size):
        raise ValueError(f"mask_resolution='original' needs masks of the input size {image_size}, got {masks.shape}.")
    sizes = tf.cast(sizes, tf.int32)
    if same_size:
        return _resize_masks(masks, scales[0], sizes[0], image_size)
    max_h, max_w = tf.reduce_max(sizes[:, 0]), tf.reduce_max(sizes[:, 1])

    def one(args):
        image_masks, scale, size = args
        binary = _resize_masks(image_masks[None], scale, size, image_size)[0]
        return tf.pad(binary, [[0, 0], [0, max_h - size[0]], [0, max_w - size[1]]])

    return tf.map_fn(one, (masks, scales, sizes),
                     fn_output_signature=tf.TensorSpec([masks.shape[1], None, None], tf.float32))


def _resize_masks(masks, scale, size, image_size):
    """Masks ``[B, N, out_h, out_w]`` of images of original size ``size`` (int32 ``[H, W]``)
    resized with ``scale`` -> 0/1 float32 ``[B, N, H, W]``: cropped to the resized image,
    resized bilinearly (the ``N`` masks as channels) and thresholded at 0.5."""
    original = tf.cast(size, tf.float32)
    # the resized image's extent inside the padded input, as transforms.resize_and_pad rounds it
    new_h = tf.clip_by_value(tf.cast(tf.round(original[0] * scale), tf.int32), 1, image_size[0])
    new_w = tf.clip_by_value(tf.cast(tf.round(original[1] * scale), tf.int32), 1, image_size[1])
    cropped = tf.transpose(masks[:, :, :new_h, :new_w], [0, 2, 3, 1])
    resized = tf.image.resize(cropped, size, method="bilinear")
    return tf.transpose(tf.cast(resized >= 0.5, tf.float32), [0, 3, 1, 2])


def _checked_serving(model, image_size, normalized_coordinates=True, mask_resolution="auto", max_pixels=40_000_000):
    """The ``_Serving`` of ``model`` after the export arguments are checked (a ``ValueError``
    naming the argument); ``image_size`` must be the model's ``image_size`` where it has one."""
    if mask_resolution not in ("auto", "original", "model"):
        raise ValueError(f"`mask_resolution` must be 'auto', 'original' or 'model', got {mask_resolution!r}.")
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in image_size)
    ):
        raise ValueError(f"`image_size` must be (height, width) positive integers, got {image_size!r}.")
    image_size = tuple(image_size)
    max_pixels = require_positive_int("max_pixels", max_pixels)
    if not model.built:
        raise ValueError("`model` must be built (call it once on a batch) before export.")
    model_size = getattr(model, "image_size", None)
    if model_size is not None:
        model_size = (model_size, model_size) if isinstance(model_size, int) else tuple(model_size)
        if model_size != image_size:
            raise ValueError(f"`image_size` {image_size} is not the model's input size {model_size} "
                             f"(its `image_size`): export with image_size={model_size}.")
    return _Serving(model, image_size, bool(normalized_coordinates), mask_resolution, max_pixels)


def export_saved_model(model, path, image_size, normalized_coordinates=True, mask_resolution="auto",
                       max_pixels=40_000_000):
    """Writes ``model`` as a SavedModel with the ``serving_default`` and ``image_bytes``
    signatures (see the module docstring) and returns ``path``.

    Args:
        model: a built detector whose ``predict_step(images)`` follows the keras_cvx contract.
        path: output directory (for TF Serving: ``<model_base_path>/<version>``).
        image_size: ``(height, width)``, the model's fixed input size (checked against the
            model's ``image_size`` attribute where it has one, as every keras_cvx detector).
        normalized_coordinates: ``detection_boxes`` normalised to ``[0, 1]`` (default) or
            in original-image pixels; ``[ymin, xmin, ymax, xmax]`` either way.
        mask_resolution: ``detection_masks`` at the original image size (``"original"``; the
            model's masks must cover its whole input), as ``predict_step`` returns them
            (``"model"``), or ``"auto"`` (default): original for full-image masks.
        max_pixels: the ``image_bytes`` signature refuses an image whose header declares more
            than this many pixels (height x width), before decoding it.
    """
    serving = _checked_serving(model, image_size, normalized_coordinates, mask_resolution, max_pixels)
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
