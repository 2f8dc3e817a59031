"""Reliability table: serving requests, COCO data, evaluation, model loading and detector
inputs (TensorFlow: SavedModels, tf.data, pycocotools around the models).

Serving cases run against one exported toy detector and end with a good request that must
still give ``predict_step``'s answer; evaluation cases compare against perfect detections
built from the annotations (AP 1 by definition); data cases write tiny COCO jsons and images
whose counts are known by construction."""

import json
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cvx.data.coco import DataWarning, coco_dataset
from keras_cvx.data.real_images import photos_dataset
from keras_cvx.data.tfrecord import tfrecord_dataset
from keras_cvx.evaluation import COCOEvaluator
from keras_cvx.export import export_saved_model
from keras_cvx.layers import ChannelEquilibrium
from keras_cvx.models import SSDNet
from tests.data.test_coco import _ann, _write_image, _write_json
from tests.data.test_tfrecord import _bytes, _ints, _record
from tests.export.test_saved_model import SIZE, _encoded, _images, _png_declaring, check, expected, make_detector
from tests.reliability.cases import Case, Handled, Raises, check_case

pytestmark = pytest.mark.tensorflow_only

_SERVED = {}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    keras.config.set_dtype_policy("float32")
    model = make_detector()
    path = str(tmp_path_factory.mktemp("served") / "1")
    export_saved_model(model, path, SIZE, max_pixels=100 * 100)
    return model, tf.saved_model.load(path)


@pytest.fixture(autouse=True)
def _share(served):
    _SERVED["model"], _SERVED["loaded"] = served


def _request(signature, fragment_of_good=None, **inputs):
    """Sends the bad request, then (whatever it raised) checks that a good one is still
    answered correctly, and re-raises."""

    def run(_):
        loaded = _SERVED["loaded"]
        try:
            return loaded.signatures[signature](**inputs)
        finally:
            good = _images((1, 20, 30, 3), 1)
            check(loaded.signatures["serving_default"](images=tf.constant(good)), expected(_SERVED["model"], good))

    return run


def _bytes_batch(*items):
    return {"image_bytes": tf.constant(list(items))}


_GOOD_PNG = _encoded(_images((20, 30, 3), 2), "PNG")


def _check_mixed_sizes(outputs):
    images = [_images((20, 30, 3), 2), _images((50, 10, 3), 3)]
    for b, image in enumerate(images):
        reference = expected(_SERVED["model"], image[None])
        check({k: v[b:b + 1] for k, v in outputs.items() if k != "image_info"}, reference)


def _export(tmp_path, model=None, **kwargs):
    export_saved_model(model if model is not None else _SERVED["model"], str(tmp_path / "out"), **kwargs)


# ------------------------------------------------------------------------------- evaluation

def _photo_targets():
    annotation_file, image_dir = photos_dataset()
    return annotation_file, [t for _, t in coco_dataset(annotation_file, image_dir, (128, 128), 8, 2, False)]


def _perfect(targets, served=False):
    labels = targets["labels"].numpy()
    valid = labels >= 0
    boxes = targets["boxes"].numpy()
    scores = np.where(valid, 0.9, 0.0).astype("float32")
    if not served:
        return {"boxes": boxes, "scores": scores, "classes": labels, "num_detections": valid.sum(1)}
    info = targets["image_info"]
    original = boxes / info["scale"].numpy()[:, None, None]
    h = info["height"].numpy()[:, None].astype("float32")
    w = info["width"].numpy()[:, None].astype("float32")
    x1, y1, x2, y2 = (original[..., k] for k in range(4))
    normalized = np.stack([y1 / h, x1 / w, y2 / h, x2 / w], -1) * valid[..., None]
    return {"detection_boxes": normalized, "detection_scores": scores,
            "detection_classes": labels.astype("float32"), "num_detections": valid.sum(1)}


def _evaluate(change=None, served=False, evaluator_options=None):
    def run(_):
        annotation_file, batches = _photo_targets()
        evaluator = COCOEvaluator(annotation_file, **(evaluator_options or {}))
        for targets in batches:
            predictions = _perfect(targets, served)
            info = targets["image_info"]
            if change is not None:
                info, predictions = change(dict(info), predictions)
            evaluator.update(info, predictions)
        return evaluator.result()

    return run


def _ap_one(result):
    assert result["bbox/AP"] == pytest.approx(1.0), result["bbox/AP"]


def _unknown_image_id_then_good(_):
    annotation_file, batches = _photo_targets()
    evaluator = COCOEvaluator(annotation_file)
    bad = dict(batches[0]["image_info"], image_id=np.array([1, 987654]))
    try:
        evaluator.update(bad, _perfect(batches[0]))
    finally:  # the evaluator stays usable: the good batch alone gives AP 1
        evaluator.update(batches[0]["image_info"], _perfect(batches[0]))
        assert evaluator.result()["bbox/AP"] == pytest.approx(1.0)


def _mixed_names(info, predictions):
    predictions = dict(predictions)
    predictions["detection_scores"] = predictions.pop("scores")
    return info, predictions


def _nan_box_added(info, predictions):
    predictions = {k: np.array(v) for k, v in predictions.items()}
    n = predictions["num_detections"]
    boxes, scores, classes = predictions["boxes"], predictions["scores"], predictions["classes"]
    for b in range(len(n)):  # one more detection with a NaN box and the highest score
        boxes[b, n[b]] = [np.nan, 0, 10, 10]
        scores[b, n[b]], classes[b, n[b]] = 1.0, 0
    predictions["num_detections"] = n + 1
    return info, predictions


def _unknown_class_added(info, predictions):
    predictions = {k: np.array(v) for k, v in predictions.items()}
    n = predictions["num_detections"]
    for b in range(len(n)):
        predictions["boxes"][b, n[b]] = [5, 5, 50, 50]
        predictions["scores"][b, n[b]], predictions["classes"][b, n[b]] = 1.0, 41
    predictions["num_detections"] = n + 1
    return info, predictions


def _no_detections(info, predictions):
    predictions = dict(predictions, num_detections=np.zeros_like(predictions["num_detections"]))
    return info, predictions


def _write_text(tmp_path, text):
    path = tmp_path / "annotations.json"
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------------------------------ data

def _json_dataset(images, annotations, **options):
    def run(tmp_path):
        path = _write_json(tmp_path, images, annotations)
        dataset = coco_dataset(path, str(tmp_path), (32, 40), 4, 1, False, **options)
        return [t for _, t in dataset]

    return run


def _warned(kind, count, boxes_left):
    def run(tmp_path, make):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            targets = make(tmp_path)
        reports = [w.message for w in caught if issubclass(w.category, DataWarning)]
        return reports, targets

    def check(out):
        reports, targets = out
        assert len(reports) == 1 and reports[0].counts.get(kind) == count, [str(r) for r in reports]
        kept = sum(int((t["labels"].numpy() >= 0).sum()) for t in targets)
        assert kept == boxes_left, kept

    return run, check


def _warning_case(case_id, kind, count, boxes_left, images, annotations):
    run, check = _warned(kind, count, boxes_left)
    return Case(case_id, "data", lambda tmp_path: run(tmp_path, _json_dataset(images, annotations)),
                Handled(check, f"one DataWarning: {kind}={count}; {boxes_left} boxes kept"))


ONE_IMAGE = [(1, "a.png", (32, 40), (32, 40))]
TWO_IMAGES = ONE_IMAGE + [(2, "b.png", (32, 40), (32, 40))]


def _tfrecord(tmp_path, num_classes=None, **overrides):
    path = _record(tmp_path / "one.tfrecord", **overrides)
    return next(iter(tfrecord_dataset(path, {0: 3, 1: 7}, (32, 40), 2, 1, False, num_classes=num_classes)))


def _size_mismatch(tmp_path):
    _write_image(tmp_path / "a.png", 30, 40)
    return _json_dataset([(1, "a.png", (32, 40), None)], [_ann(1, 1, [1, 1, 5, 5])])(tmp_path)


def _non_image_file(tmp_path):
    (tmp_path / "a.png").write_bytes(b"this is not an image")
    return _json_dataset([(1, "a.png", (32, 40), None)], [_ann(1, 1, [1, 1, 5, 5])])(tmp_path)


def _truncated_png(tmp_path):
    (tmp_path / "a.png").write_bytes(_encoded(_images((32, 40, 3), 4), "PNG")[:-20])
    return _json_dataset([(1, "a.png", (32, 40), None)], [_ann(1, 1, [1, 1, 5, 5])])(tmp_path)


# --------------------------------------------------------------------------- models, loading

def _ssd_net():
    model = SSDNet(num_classes=3, image_size=64, backbone="resnet10", width_multiplier=0.125, fusion_channels=16)
    model(np.zeros((1, 64, 64, 3), "float32"))
    return model


def _ssd_loss(labels):
    def run(_):
        y = {"boxes": np.array([[[4, 4, 30, 30]]], "float32"), "labels": np.array([[labels]], "int32")}
        return float(_ssd_net().compute_loss(np.zeros((1, 64, 64, 3), "float32"), y))

    return run


def _ssd_predict_on_blank(_):
    out = _ssd_net().predict_step(np.zeros((2, 64, 64, 3), "float32"))
    return {k: keras.ops.convert_to_numpy(v) for k, v in out.items()}


def _check_blank_predictions(out):
    assert np.isfinite(out["boxes"]).all() and np.isfinite(out["scores"]).all()
    n = out["num_detections"]
    assert ((n >= 0) & (n <= out["scores"].shape[1])).all()
    assert (out["classes"][:, :][np.arange(out["classes"].shape[1])[None] >= n[:, None]] == -1).all()


def _block_model():
    inputs = keras.Input((8, 8, 8))
    return keras.Model(inputs, keras.layers.Dense(2)(ChannelEquilibrium()(inputs)))


def _round_trip(tmp_path):
    model = _block_model()
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 8)).astype("float32")
    path = str(tmp_path / "block.keras")
    model.save(path)
    return model.predict(x, verbose=0), keras.saving.load_model(path).predict(x, verbose=0)


def _tampered(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs))
    path = str(tmp_path / "lambda.keras")
    model.save(path)
    keras.saving.load_model(path)


CASES = [
    # serving: every bad request is refused clearly and the model keeps answering
    Case("image_bytes: bytes that are not an image", "serving", _request("image_bytes", **_bytes_batch(b"not an image")),
         Raises(tf.errors.InvalidArgumentError, "image 0 of the batch")),
    Case("image_bytes: PNG header declaring 16000x16000", "serving",
         _request("image_bytes", **_bytes_batch(_GOOD_PNG, _png_declaring(16000, 16000))),
         Raises(tf.errors.InvalidArgumentError, r"image 1 of the batch: 16000x16000 pixels .*above the limit of 10000")),
    Case("image_bytes: pixel count one above the limit", "serving",
         _request("image_bytes", **_bytes_batch(_encoded(_images((1, 10001, 3), 5), "PNG"))),
         Raises(tf.errors.InvalidArgumentError, "above the limit of 10000")),
    Case("image_bytes: truncated PNG header", "serving", _request("image_bytes", **_bytes_batch(_GOOD_PNG, _GOOD_PNG[:20])),
         Raises(tf.errors.InvalidArgumentError, "image 1 of the batch")),
    Case("image_bytes: empty batch", "serving", _request("image_bytes", image_bytes=tf.constant([], tf.string)),
         Raises(tf.errors.InvalidArgumentError, "empty batch")),
    Case("image_bytes: a matrix of strings", "serving", _request("image_bytes", image_bytes=tf.constant([[_GOOD_PNG]])),
         Raises(tf.errors.InvalidArgumentError, r"must be a string vector \[batch\]")),
    Case("images: 4 channels", "serving", _request("serving_default", images=tf.zeros((1, 8, 8, 4), tf.uint8)),
         Raises(tf.errors.InvalidArgumentError, r"must be uint8 \[batch, height, width, 3\]")),
    Case("images: rank 3", "serving", _request("serving_default", images=tf.zeros((8, 8, 3), tf.uint8)),
         Raises(tf.errors.InvalidArgumentError, r"must be uint8 \[batch, height, width, 3\]")),
    Case("images: float32 instead of uint8", "serving", _request("serving_default", images=tf.zeros((1, 8, 8, 3))),
         Raises((TypeError, ValueError, tf.errors.InvalidArgumentError), "uint8|dtype")),
    Case("images: zero height", "serving", _request("serving_default", images=tf.zeros((1, 0, 8, 3), tf.uint8)),
         Raises(tf.errors.InvalidArgumentError, "positive height and width")),
    Case("images: empty batch", "serving", _request("serving_default", images=tf.zeros((0, 8, 8, 3), tf.uint8)),
         Raises(tf.errors.InvalidArgumentError, "empty batch")),
    Case("image_bytes: a batch of two sizes", "serving",
         _request("image_bytes", **_bytes_batch(_GOOD_PNG, _encoded(_images((50, 10, 3), 3), "PNG"))),
         Handled(_check_mixed_sizes, "each image's detections in its own coordinates")),
    Case("export: image_size with a zero", "serving", lambda tmp: _export(tmp, image_size=(32, 0)),
         Raises(ValueError, "`image_size` must be")),
    Case("export: max_pixels 0", "serving", lambda tmp: _export(tmp, image_size=SIZE, max_pixels=0),
         Raises(ValueError, "`max_pixels` must be a positive integer")),
    Case("export: image_size other than the model's", "serving",
         lambda tmp: _export(tmp, model=_ssd_net(), image_size=SIZE),
         Raises(ValueError, r"`image_size` \(32, 32\) is not the model's input size \(64, 64\)")),
    Case("export: unbuilt model", "serving", lambda tmp: _export(tmp, model=keras.Sequential([keras.layers.Dense(2)]),
                                                                 image_size=SIZE),
         Raises(ValueError, "must be built")),
    # evaluation
    Case("unknown image id, then a good batch", "evaluation", _unknown_image_id_then_good,
         Raises(ValueError, "987654")),
    Case("served outputs (detection_*) of perfect detections", "evaluation", _evaluate(served=True),
         Handled(_ap_one, "AP 1.0")),
    Case("served and predict names mixed", "evaluation", _evaluate(change=_mixed_names), Raises(ValueError, "mix")),
    Case("a detection with a NaN box", "evaluation", _evaluate(change=_nan_box_added),
         Handled(_ap_one, "ignored: AP of the others 1.0")),
    Case("a detection of a class outside class_id_map", "evaluation", _evaluate(change=_unknown_class_added),
         Handled(_ap_one, "ignored: AP 1.0")),
    Case("no detections at all", "evaluation", _evaluate(change=_no_detections),
         Handled(lambda r: r["bbox/AP"] == 0.0 or pytest.fail(str(r)), "every number 0")),
    Case("annotation file missing", "evaluation", lambda tmp: COCOEvaluator(str(tmp / "missing.json")),
         Raises(ValueError, "missing.json")),
    Case("annotation file truncated", "evaluation", lambda tmp: COCOEvaluator(_write_text(tmp, '{"images": [')),
         Raises(ValueError, r"Cannot read COCO annotation file .*annotations\.json")),
    Case("class_id_map to an unknown category", "evaluation",
         lambda tmp: COCOEvaluator(photos_dataset()[0], class_id_map={0: 99}),
         Raises(ValueError, r"category ids not in the annotations: \[99\]")),
    Case("served_box_format misspelt", "evaluation",
         lambda tmp: COCOEvaluator(photos_dataset()[0], served_box_format="xyxy"),
         Raises(ValueError, "served_box_format")),
    # data
    _warning_case("duplicate image id", "duplicate_image_id", 1, 1,
                  ONE_IMAGE + [(1, "b.png", (32, 40), (32, 40))], [_ann(1, 1, [1, 1, 5, 5])]),
    _warning_case("annotation of an unknown image id", "unknown_image_id", 1, 1, ONE_IMAGE,
                  [_ann(1, 1, [1, 1, 5, 5]), _ann(2, 77, [1, 1, 5, 5])]),
    _warning_case("annotation of an unknown category", "unknown_category", 1, 1, ONE_IMAGE,
                  [_ann(1, 1, [1, 1, 5, 5]), _ann(2, 1, [1, 1, 5, 5], category_id=99)]),
    _warning_case("bbox of 3 numbers", "malformed_bbox", 1, 1, ONE_IMAGE,
                  [_ann(1, 1, [1, 1, 5, 5]), _ann(2, 1, [1, 1, 5])]),
    _warning_case("box outside the image", "empty_box", 1, 1, ONE_IMAGE,
                  [_ann(1, 1, [1, 1, 5, 5]), _ann(2, 1, [100, 100, 5, 5])]),
    _warning_case("more boxes than max_instances", "beyond_max_instances", 2, 5, TWO_IMAGES,
                  [_ann(i, 1, [i, i, 5, 5]) for i in range(1, 7)] + [_ann(7, 2, [1, 1, 5, 5])]),
    Case("strict=True with an unknown category", "data",
         _json_dataset(ONE_IMAGE, [_ann(1, 1, [1, 1, 5, 5]), _ann(2, 1, [1, 1, 5, 5], category_id=99)], strict=True),
         Raises(ValueError, r"image 1, annotation 2 \(category_id 99\)")),
    Case("class id >= num_classes", "data",
         _json_dataset(ONE_IMAGE, [_ann(1, 1, [1, 1, 5, 5], category_id=7)], num_classes=1),
         Raises(ValueError, "annotation 1 of image 1 has category_id 7")),
    Case("image file smaller than the json says", "data", _size_mismatch,
         Raises(tf.errors.InvalidArgumentError, r"a\.png' \(image id 1\) is 40x30 .*says 40x32")),
    Case("image file missing", "data", _json_dataset([(1, "gone.png", (32, 40), None)], [_ann(1, 1, [1, 1, 5, 5])]),
         Raises(tf.errors.InvalidArgumentError, r"gone\.png' \(image id 1\) cannot be read")),
    Case("image file that is not an image", "data", _non_image_file,
         Raises(tf.errors.InvalidArgumentError, r"\(image id 1\) is not a JPEG, PNG, GIF, BMP or WebP")),
    Case("truncated PNG file", "data", _truncated_png, Raises(tf.errors.InvalidArgumentError, "truncated PNG")),
    Case("TFRecord without image/encoded", "data", lambda tmp: _tfrecord(tmp, **{"image/encoded": None}),
         Raises(tf.errors.InvalidArgumentError, r"record 0 of .*image/source_id=42.*has no image/encoded")),
    Case("TFRecord class id >= num_classes", "data",
         lambda tmp: _tfrecord(tmp, num_classes=1, **{"image/object/class/label": _ints([7])}),
         Raises(tf.errors.InvalidArgumentError, r"image/source_id=42.*not all < num_classes=1")),
    Case("TFRecord source_id not an integer", "data", lambda tmp: _tfrecord(tmp, **{"image/source_id": _bytes([b"x"])}),
         Raises(tf.errors.InvalidArgumentError, "image/source_id that is not an integer")),
    # models
    Case("SSD-NET loss with class id = num_classes (eager)", "models", _ssd_loss(3),
         Raises(ValueError, r"`labels` holds 3 .*0\.\.2 for num_classes=3")),
    Case("SSD-NET loss with class id -3 (eager)", "models", _ssd_loss(-3), Raises(ValueError, "holds -3")),
    Case("SSD-NET loss of an image without objects", "models", _ssd_loss(-1),
         Handled(lambda loss: loss == 0.0 or pytest.fail(str(loss)), "0 (no positives, no hard negatives)")),
    Case("SSD-NET detections on blank images", "models", _ssd_predict_on_blank,
         Handled(_check_blank_predictions, "finite, padded with -1 past num_detections")),
    # loading
    Case(".keras round trip of a ChannelEquilibrium model", "loading", _round_trip,
         Handled(lambda out: np.testing.assert_array_equal(*out), "identical outputs")),
    Case(".keras with a Lambda layer, safe_mode", "loading", _tampered, Raises(ValueError, "safe_mode")),
    Case(".keras file missing", "loading", lambda tmp: keras.saving.load_model(str(tmp / "none.keras")),
         Raises(ValueError, "File not found")),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_case(case, tmp_path):
    check_case(case, tmp_path)
