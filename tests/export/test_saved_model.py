"""Tests for keras_cvx.export.saved_model: a toy detector exported, loaded with
``tf.saved_model.load`` and run with ``saved_model_cli run`` gives the detections of
``model.predict_step`` mapped back to the original image (NumPy reference); bad requests
fail clearly and the model keeps answering."""

import io
import os
import resource
import struct
import subprocess
import sys
import time
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from PIL import Image

from keras_cvx.data.transforms import resize_and_pad
from keras_cvx.export.saved_model import _header_size, _prepare, export_saved_model
from keras_cvx.losses.replicas import normalized_sum

SIZE = (32, 32)
TOP_K = 5


@keras.saving.register_keras_serializable(package="keras_cvx_tests")
class ToyDetector(keras.Model):
    """4x4 grid of 8x8 cell boxes; per-cell scores for 2 classes from a strided conv; the
    top-5 cells are the detections, those with score <= 0.5 are padding (class -1).
    ``compute_loss`` takes the detector target contract (``boxes``, ``labels`` with -1).
    ``with_masks=True``: 3x3 masks (not full-image); ``"full"``: full-image 0/1 masks
    ``[B, 5, 32, 32]``, each detection's cell box."""

    def __init__(self, with_masks=False, **kwargs):
        super().__init__(**kwargs)
        self.with_masks = with_masks
        self.head = keras.layers.Conv2D(2, 8, strides=8)
        ys, xs = np.meshgrid(np.arange(4) * 8.0, np.arange(4) * 8.0, indexing="ij")
        cells = np.stack([xs, ys, xs + 8.0, ys + 8.0], axis=-1).reshape(16, 4)
        self.cells = cells.astype("float32")

    def call(self, images, training=False):
        return self.head(images / 255.0)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Sigmoid cross-entropy of each cell and class against "the cell centre lies in a
        ground-truth box of that class", summed and divided by the positives."""
        logits = ops.reshape(ops.cast(y_pred, "float32"), (-1, 16, 2))
        centres = (self.cells[:, :2] + self.cells[:, 2:]) / 2.0
        boxes, labels = y["boxes"], y["labels"]
        cx, cy = centres[None, :, None, 0], centres[None, :, None, 1]
        inside = (
            (cx > boxes[:, None, :, 0]) & (cx < boxes[:, None, :, 2])
            & (cy > boxes[:, None, :, 1]) & (cy < boxes[:, None, :, 3]) & (labels[:, None, :] >= 0)
        )
        one_hot = ops.one_hot(ops.maximum(labels, 0), 2)
        target = ops.max(ops.cast(inside, "float32")[..., None] * one_hot[:, None], axis=2)
        bce = ops.binary_crossentropy(target, logits, from_logits=True)
        return normalized_sum(ops.sum(bce), ops.sum(target), y)

    def predict_step(self, images):
        logits = ops.reshape(self(images), (-1, 16, 2))
        scores_all = ops.sigmoid(logits)
        best = ops.max(scores_all, axis=-1)
        scores, index = ops.top_k(best, TOP_K)
        classes = ops.take_along_axis(ops.argmax(scores_all, axis=-1), index, axis=1)
        keep = scores > 0.5
        out = {
            "boxes": ops.take(ops.convert_to_tensor(self.cells), index, axis=0),
            "scores": scores,
            "classes": ops.where(keep, ops.cast(classes, "int32"), -1),
            "num_detections": ops.sum(ops.cast(keep, "int32"), axis=1),
        }
        if self.with_masks == "full":
            grid = ops.arange(SIZE[0], dtype="float32") + 0.5
            box = out["boxes"][:, :, None, None, :]
            inside_x = (grid[None, None, None, :] > box[..., 0]) & (grid[None, None, None, :] < box[..., 2])
            inside_y = (grid[None, None, :, None] > box[..., 1]) & (grid[None, None, :, None] < box[..., 3])
            out["masks"] = ops.cast(inside_x & inside_y, "float32")
        elif self.with_masks:
            out["masks"] = ops.sigmoid(ops.tile(ops.reshape(logits[:, :TOP_K, 0], (-1, TOP_K, 1, 1)), (1, 1, 3, 3)))
        return out


def make_detector(with_masks=False):
    keras.utils.set_random_seed(3)
    model = ToyDetector(with_masks=with_masks)
    model(np.zeros((1, *SIZE, 3), "float32"))
    # a bias that puts some cells above and some below the 0.5 threshold
    kernel, _ = model.head.get_weights()
    model.head.set_weights([kernel * 4.0, np.array([-3.5, -3.6], "float32")])
    return model


def expected(model, images):
    """NumPy reference: resize/pad, predict_step, boxes back to the image, yxyx normalised."""
    rows = []
    for image in images:
        padded, scale = resize_and_pad(image, SIZE)
        out = {k: np.asarray(v)[0] for k, v in model.predict_step(padded[None]).items()}
        h, w = image.shape[:2]
        boxes = out["boxes"] / float(scale)
        x1, y1, x2, y2 = [np.clip(boxes[:, i], 0, lim) for i, lim in enumerate((w, h, w, h))]
        valid = out["classes"] >= 0
        norm = np.stack([y1 / h, x1 / w, y2 / h, x2 / w], axis=-1) * valid[:, None]
        rows.append(dict(
            detection_boxes=norm, detection_scores=out["scores"] * valid,
            detection_classes=out["classes"].astype("float32"), num_detections=out["num_detections"],
        ))
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def check(outputs, reference):
    for key in ("detection_boxes", "detection_scores", "detection_classes"):
        np.testing.assert_allclose(np.asarray(outputs[key]), reference[key], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(outputs["num_detections"]), reference["num_detections"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.config.set_dtype_policy("float32")
    model = make_detector(with_masks=True)
    path = str(tmp_path_factory.mktemp("export") / "toy" / "1")
    export_saved_model(model, path, SIZE)
    return model, path, tf.saved_model.load(path)


def _images(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, shape).astype("uint8")


def test_serving_default_matches_predict_step_for_any_size(exported):
    model, _, loaded = exported
    square = _images((2, 32, 32, 3), 0)
    wide = _images((1, 24, 64, 3), 1)
    counts = []
    for images in (square, wide):
        outputs = loaded.signatures["serving_default"](images=tf.constant(images))
        reference = expected(model, images)
        check(outputs, reference)
        counts.extend(reference["num_detections"].tolist())
        assert outputs["detection_classes"].dtype == tf.float32
        assert outputs["num_detections"].dtype == tf.int32
    # the model makes real and padding detections, so both branches are exercised
    assert 0 < sum(counts) < TOP_K * len(counts)
    info = loaded.signatures["serving_default"](images=tf.constant(wide))["image_info"].numpy()
    np.testing.assert_allclose(info[0], [[24, 64], [32, 32], [0.5, 0.5], [0, 0]])
    masks = loaded.signatures["serving_default"](images=tf.constant(square))["detection_masks"]
    assert masks.shape == (2, TOP_K, 3, 3)


def test_image_bytes_matches_uint8_signature(exported):
    model, _, loaded = exported
    images = [_images((24, 40, 3), 2), _images((48, 16, 3), 3)]
    encoded = tf.constant([tf.io.encode_png(im).numpy() for im in images])
    outputs = loaded.signatures["image_bytes"](image_bytes=encoded)
    for i, image in enumerate(images):
        reference = expected(model, image[None])
        check({k: v[i : i + 1] for k, v in outputs.items()}, reference)


def test_saved_model_cli_run_matches(exported, tmp_path):
    model, path, _ = exported
    images = _images((2, 40, 30, 3), 4)
    np.save(tmp_path / "images.npy", images)
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    done = subprocess.run(
        [cli, "run", "--dir", path, "--tag_set", "serve", "--signature_def", "serving_default",
         "--inputs", f"images={tmp_path / 'images.npy'}", "--outdir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = {name: np.load(tmp_path / "out" / f"{name}.npy") for name in
               ("detection_boxes", "detection_scores", "detection_classes", "num_detections")}
    check(outputs, expected(model, images))


def test_bad_requests_fail_clearly_and_model_keeps_answering(exported):
    model, _, loaded = exported
    serve, by_bytes = loaded.signatures["serving_default"], loaded.signatures["image_bytes"]
    good = _images((1, 32, 32, 3), 5)
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError), match="uint8|dtype|float"):
        serve(images=tf.constant(good, tf.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"uint8 \[batch, height, width, 3\]"):
        serve(images=tf.constant(good[0]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"uint8 \[batch, height, width, 3\]"):
        serve(images=tf.constant(good[..., :1]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="string vector"):
        by_bytes(image_bytes=tf.constant(b"abc"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="empty batch"):
        serve(images=tf.zeros((0, 32, 32, 3), tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="positive height and width"):
        serve(images=tf.zeros((1, 0, 32, 3), tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="image 0 of the batch: not a PNG, JPEG, GIF or BMP"):
        by_bytes(image_bytes=tf.constant([b"not an image at all"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="empty batch"):
        by_bytes(image_bytes=tf.constant([], tf.string))
    check(serve(images=tf.constant(good)), expected(model, good))
    check(by_bytes(image_bytes=tf.constant([tf.io.encode_png(good[0]).numpy()])), expected(model, good))


def _encoded(image, fmt, **kwargs):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _png_declaring(width, height):
    """A small PNG whose IHDR (and its CRC) is patched to say ``width x height``."""
    data = bytearray(_encoded(_images((8, 8, 3), 9), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_image_bytes_refuses_a_huge_image_from_its_header(exported):
    model, _, loaded = exported
    by_bytes = loaded.signatures["image_bytes"]
    good = _images((1, 30, 20, 3), 10)
    png = tf.io.encode_png(good[0]).numpy()
    huge = _png_declaring(16000, 16000)  # 768 MB once decoded
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    start = time.perf_counter()
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"image 2 of the batch: 16000x16000 pixels \(width x height\) is above the limit of 40000000 set at "
              r"export \(max_pixels\)",
    ):
        by_bytes(image_bytes=tf.constant([png, png, huge]))
    seconds = time.perf_counter() - start
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    assert seconds < 5 and grown < 200 * 1024, (seconds, grown)
    check(by_bytes(image_bytes=tf.constant([png])), expected(model, good))


def test_header_sizes_equal_decoded_sizes():
    """Sizes read from the header equal ``tf.io.decode_image``'s for files written by PIL."""
    header = tf.function(_header_size)
    rgb = _images((37, 53, 3), 11)
    cases = {
        "png": _encoded(rgb, "PNG"),
        "png palette": _encoded(np.asarray(Image.fromarray(rgb).convert("P")), "PNG"),
        "png 16-bit grey": _encoded(np.asarray(rgb[..., 0], np.uint16) * 257, "PNG"),
        "jpeg": _encoded(rgb, "JPEG"),
        "jpeg progressive": _encoded(rgb, "JPEG", progressive=True),
        "jpeg grey, exif, icc": _encoded(rgb[..., 0], "JPEG", exif=b"Exif\0\0" + bytes(3000), icc_profile=bytes(70000)),
        "gif": _encoded(rgb, "GIF"),
        "bmp": _encoded(rgb, "BMP"),
    }
    frames = [Image.fromarray(_images((37, 53, 3), 20 + i)) for i in range(3)]
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:], comment=b"c" * 600)
    cases["gif 3 frames"] = animated.getvalue()
    small_screen = bytearray(cases["gif"])
    small_screen[6:10] = struct.pack("<HH", 5, 5)  # TensorFlow ignores the logical screen
    cases["gif 5x5 screen"] = bytes(small_screen)
    bottom_up = bytearray(cases["bmp"])
    bottom_up[22:26] = struct.pack("<i", -37)  # top-down rows: negative height
    cases["bmp top-down"] = bytes(bottom_up)
    for name, data in cases.items():
        kind, complete, height, width, _ = (t.numpy() for t in header(tf.constant(data)))
        decoded = tf.io.decode_image(data, channels=3, expand_animations=False).shape
        assert complete and (height, width) == tuple(decoded[:2]) == (37, 53), (name, kind, height, width)
    assert header(tf.constant(cases["gif 3 frames"]))[4].numpy() == 3 * 37 * 53
    for truncated in (cases["png"][:23], cases["jpeg"][:30], cases["gif"][:12], cases["bmp"][:25]):
        assert not header(tf.constant(truncated))[1].numpy()


def test_max_pixels_limit_is_inclusive_and_bad_images_name_their_index(tmp_path):
    model = make_detector()
    with pytest.raises(ValueError, match="max_pixels"):
        export_saved_model(model, str(tmp_path / "bad"), SIZE, max_pixels=0)
    path = export_saved_model(model, str(tmp_path / "limit"), SIZE, max_pixels=64 * 64)
    loaded = tf.saved_model.load(path)
    by_bytes, serve = loaded.signatures["image_bytes"], loaded.signatures["serving_default"]
    at_limit, above = _images((64, 64, 3), 12), _images((17, 241, 3), 13)  # 4096 and 4097 pixels
    for fmt in ("PNG", "JPEG", "GIF", "BMP"):
        outputs = by_bytes(image_bytes=tf.constant([_encoded(at_limit, fmt), _encoded(_images((1, 4096, 3), 14), fmt)]))
        assert outputs["num_detections"].shape == (2,)
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"image 1 of the batch: 241x17 pixels .* 4096 set"):
            by_bytes(image_bytes=tf.constant([_encoded(at_limit, fmt), _encoded(above, fmt)]))
    frames = [Image.fromarray(_images((40, 40, 3), 16 + i)) for i in range(3)]  # 3 x 1600 pixels
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:])
    message = r"image 0 of the batch: 40x40 pixels \(width x height\), 4800 in all its GIF frames, is above the limit"
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        by_bytes(image_bytes=tf.constant([animated.getvalue()]))
    png = _encoded(at_limit, "PNG")
    bad = [
        ("not a PNG, JPEG, GIF or BMP image", b"RIFF\0\0\0\0WEBPVP8 "),
        ("truncated or malformed PNG header", png[:20]),
        ("truncated or malformed PNG header", _png_declaring(0, 8)),
        ("truncated or malformed JPEG header", _encoded(at_limit, "JPEG")[:100]),  # before its SOF0
        ("truncated or malformed GIF header", _encoded(at_limit, "GIF")[:8]),
        ("truncated or malformed BMP header", _encoded(at_limit, "BMP")[:25]),
    ]
    for message, data in bad:
        with pytest.raises(tf.errors.InvalidArgumentError, match="image 1 of the batch: " + message):
            by_bytes(image_bytes=tf.constant([png, data, png]))
    # the limit guards decoding only: serving_default takes a tensor that already exists
    assert serve(images=tf.constant(_images((1, 100, 100, 3), 15)))["num_detections"].shape == (1,)
    check(by_bytes(image_bytes=tf.constant([png])), expected(model, at_limit[None]))


def test_uint8_resize_equals_the_resize_of_a_float32_copy_exactly():
    """``resize_and_pad`` resizes uint8 images without a full-size float32 copy; the values are
    those of resizing the float32 copy (computed here with tf.image.resize directly)."""
    prepare = tf.function(_prepare, reduce_retracing=True)
    for shape in ((24, 40), (48, 16), (1, 333), (1000, 3), (31, 33), (500, 700), (7, 4000)):
        image = tf.constant(_images((*shape, 3), sum(shape)))
        padded, scale, size = prepare(image, SIZE)
        factor = min(SIZE[0] / shape[0], SIZE[1] / shape[1])
        new = [min(max(int(np.round(np.float32(d) * np.float32(factor))), 1), s) for d, s in zip(shape, SIZE)]
        resized = tf.image.resize(tf.cast(image, tf.float32), new, method="bilinear").numpy().clip(0, 255)
        reference = np.zeros((*SIZE, 3), np.float32)
        reference[: new[0], : new[1]] = resized
        np.testing.assert_array_equal(padded.numpy(), reference)
        assert np.isclose(scale.numpy(), factor) and tuple(size.numpy()) == shape


def test_pixel_coordinates_option_and_argument_checks(tmp_path):
    model = make_detector()
    path = export_saved_model(model, str(tmp_path / "pixels"), SIZE, normalized_coordinates=False)
    images = _images((1, 16, 64, 3), 6)
    outputs = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    reference = expected(model, images)
    np.testing.assert_allclose(
        outputs["detection_boxes"].numpy(), reference["detection_boxes"] * np.array([16, 64, 16, 64]), atol=1e-4
    )
    assert "detection_masks" not in outputs
    with pytest.raises(ValueError, match="image_size"):
        export_saved_model(model, str(tmp_path / "bad"), (32, 0))
    with pytest.raises(ValueError, match="built"):
        export_saved_model(ToyDetector(), str(tmp_path / "unbuilt"), SIZE)


def test_mixed_float16_export_outputs_float32(tmp_path):
    keras.config.set_dtype_policy("mixed_float16")
    model = make_detector()
    path = export_saved_model(model, str(tmp_path / "f16"), SIZE)
    images = _images((2, 40, 30, 3), 7)
    outputs = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    assert {outputs[k].dtype for k in ("detection_boxes", "detection_scores", "detection_classes")} == {tf.float32}
    reference = expected(model, images)
    np.testing.assert_allclose(outputs["detection_scores"].numpy(), reference["detection_scores"], atol=1e-3)
    np.testing.assert_array_equal(outputs["num_detections"].numpy(), reference["num_detections"])


def test_export_of_model_built_under_mirrored_strategy(tmp_path):
    from tests.training.test_trainer import run_python

    out = run_python(
        f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import numpy as np
        from tests.export.test_saved_model import check, expected, make_detector
        from keras_cvx.export.saved_model import _header_size, _prepare, export_saved_model
        with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
            model = make_detector()
        path = export_saved_model(model, {str(tmp_path / "mirrored")!r}, (32, 32))
        images = np.random.default_rng(0).integers(0, 256, (2, 40, 30, 3)).astype("uint8")
        check(tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images)),
              expected(model, images))
        print("matches")
        """
    )
    assert out.strip().splitlines()[-1] == "matches"
