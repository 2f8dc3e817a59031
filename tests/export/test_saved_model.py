"""Tests for keras_cvx.export.saved_model: a toy detector exported, loaded with
``tf.saved_model.load`` and run with ``saved_model_cli run`` gives the detections of
``model.predict_step`` mapped back to the original image (NumPy reference); bad requests
fail clearly and the model keeps answering."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from keras_cvx.data.transforms import resize_and_pad
from keras_cvx.export.saved_model import export_saved_model
from keras_cvx.losses.replicas import normalized_sum

SIZE = (32, 32)
TOP_K = 5


@keras.saving.register_keras_serializable(package="keras_cvx_tests")
class ToyDetector(keras.Model):
    """4x4 grid of 8x8 cell boxes; per-cell scores for 2 classes from a strided conv; the
    top-5 cells are the detections, those with score <= 0.5 are padding (class -1).
    ``compute_loss`` takes the detector target contract (``boxes``, ``labels`` with -1)."""

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
        if self.with_masks:
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
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format|decode"):
        by_bytes(image_bytes=tf.constant([b"not an image at all"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="empty batch"):
        by_bytes(image_bytes=tf.constant([], tf.string))
    check(serve(images=tf.constant(good)), expected(model, good))
    check(by_bytes(image_bytes=tf.constant([tf.io.encode_png(good[0]).numpy()])), expected(model, good))


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
        from keras_cvx.export.saved_model import export_saved_model
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
