"""Tests for keras_cvx.export.onnx: small SSD-NET, CondInst, PointINS, Faster R-CNN and
classifier models exported to ONNX and run by onnxruntime (CPU) give the outputs of the SavedModel's ``serving_default``
function (``_Serving.detect_images``, the ``tf.function`` that ``export_saved_model`` saves) and
of ``predict_step`` in eager Keras mapped back to the original image in NumPy: boxes within
1e-4 (normalised coordinates, i.e. relative to the image size), the same classes, counts and
masks; on the bundled photographs (``photos_dataset``, ``coins_dataset``) and synthetic
images (``synthetic_shapes``, noise of odd shapes), one at a time and as a batch; bad inputs
get onnxruntime's exception and the session keeps answering.

One test per model (each converts its model once), so ``pytest -n 2`` never converts a model
twice."""

import json
import os

import keras
import numpy as np
import onnx
import onnxruntime
import pytest
import tensorflow as tf
from PIL import Image

from keras_cvx.data.real_images import coins_dataset, photos_dataset
from keras_cvx.data.shapes import synthetic_shapes
from keras_cvx.data.transforms import resize_and_pad
from keras_cvx.export import export_onnx
from keras_cvx.export.saved_model import _checked_serving
from keras_cvx.layers.ssd_decoder import SSDDecoder
from keras_cvx.models import MobileNetV2, ResNet, SSDNet, digit_convnet
from tests.models.test_condinst import tiny_model as tiny_condinst
from tests.models.test_pointins import tiny_model as tiny_pointins
from tests.models.test_faster_rcnn import tiny_model as tiny_faster_rcnn

SSD_SIZE = 160  # SSD-NET's Neighbor Erasing resizes a 3 x 3 gate to 10 x 10 (a ratio that is not a float32)
BOX_TOLERANCE = 1e-4  # normalised coordinates: a fraction of the image's height or width
DETECTION_KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections", "image_info")


def _read(folder, name):
    return np.asarray(Image.open(os.path.join(folder, name)).convert("RGB"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """``(singles, batch)``: a list of uint8 images of different sizes (the two photographs, the
    coins, a synthetic shapes image, noise 17 x 150) and one uint8 batch ``[5, 300, 384, 3]``
    (the three photographs cropped to 300 x 384, two synthetic shapes images)."""
    chelsea, coffee = (_read(photos_dataset()[1], name) for name in ("chelsea.png", "coffee.png"))
    coins = _read(coins_dataset()[1], "coins.png")
    shapes_dir = str(tmp_path_factory.mktemp("shapes"))
    annotations = json.load(open(synthetic_shapes(shapes_dir, num_images=3, image_size=(300, 384), seed=1)))
    shapes = [_read(os.path.join(shapes_dir, "images"), image["file_name"]) for image in annotations["images"]]
    noise = np.random.default_rng(0).integers(0, 256, (17, 150, 3)).astype("uint8")
    singles = [chelsea, coffee, coins, shapes[0], noise]
    batch = np.stack([chelsea[:300, :384], coffee[:300, :384], coins[:300, :384], shapes[1], shapes[2]])
    return singles, batch


def run_onnx(session, images):
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, {"images": images})))


def session_of(path):
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])


def keras_reference(model, image, image_size):
    """NumPy reference of one image: the training resize/pad, eager ``predict_step``, boxes
    back to the original image as normalised ``[ymin, xmin, ymax, xmax]`` (padding rows 0)."""
    padded, scale = resize_and_pad(image, image_size)
    out = {k: keras.ops.convert_to_numpy(v)[0] for k, v in model.predict_step(padded[None]).items()}
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (np.clip(out["boxes"][:, i] / float(scale), 0, limit) for i, limit in enumerate((w, h, w, h)))
    valid = out["classes"] >= 0
    return {
        "detection_boxes": np.stack([y1 / h, x1 / w, y2 / h, x2 / w], -1) * valid[:, None],
        "detection_scores": out["scores"] * valid,
        "detection_classes": out["classes"].astype("float32"),
        "num_detections": out["num_detections"],
    }


def compare_detections(onnx_out, reference, stats, keys=DETECTION_KEYS, mask_mismatch=0.0):
    """Asserts that ONNX Runtime's detections are the reference's (boxes within
    ``BOX_TOLERANCE``, scores within 1e-4 relative, classes, counts equal, masks equal but for
    at most the fraction ``mask_mismatch`` of their pixels) and adds the largest box difference
    and the number of detections compared to ``stats``."""
    np.testing.assert_array_equal(onnx_out["num_detections"], reference["num_detections"])
    np.testing.assert_array_equal(onnx_out["detection_classes"], reference["detection_classes"])
    boxes, expected = onnx_out["detection_boxes"], reference["detection_boxes"]
    np.testing.assert_allclose(boxes, expected, rtol=0, atol=BOX_TOLERANCE)
    np.testing.assert_allclose(onnx_out["detection_scores"], reference["detection_scores"], rtol=1e-4, atol=1e-6)
    for key in set(keys) - {"detection_boxes", "detection_scores", "detection_classes", "num_detections",
                            "detection_masks"}:
        np.testing.assert_allclose(onnx_out[key], reference[key], rtol=1e-6)
    if "detection_masks" in reference:
        differing = np.mean(onnx_out["detection_masks"] != reference["detection_masks"])
        assert differing <= mask_mismatch, differing
        stats["mask pixels"] = stats.get("mask pixels", 0) + int(reference["detection_masks"].sum())
        stats["differing mask pixels"] = max(stats.get("differing mask pixels", 0.0), float(differing))
    scores = reference["detection_scores"].reshape(-1, boxes.shape[-2])
    counts = np.reshape(reference["num_detections"], -1)
    differences = np.abs(onnx_out["detection_scores"].reshape(scores.shape) - scores).max(axis=-1)
    # per image: the closest two scores over the largest score difference (two detections may
    # swap places when their scores are closer than the two runtimes' difference)
    margins = [np.min(-np.diff(row[:n])) / max(d, 1e-9) for row, n, d in zip(scores, counts, differences) if n > 1]
    for key, value, combine in (
        ("max box difference", np.abs(boxes - expected).max(), max),
        ("max score difference", differences.max(), max),
        ("score gap / difference", min(margins, default=np.inf), min),
    ):
        stats[key] = combine(stats.get(key, float(value)), float(value))
    stats["detections"] = stats.get("detections", 0) + int(counts.sum())


def check_detector(model, path, images, stats, mask_mismatch=0.0):
    """Exports ``model``, then compares ONNX Runtime's outputs with the SavedModel's
    ``serving_default`` function and with eager ``predict_step`` on every single image and on
    the batch; returns the session. ``mask_mismatch``: see ``compare_detections``."""
    image_size = model.image_size if isinstance(model.image_size, tuple) else (model.image_size,) * 2
    export_onnx(model, path)
    session = session_of(path)
    serving = tf.function(_checked_serving(model, image_size).detect_images,
                          input_signature=[tf.TensorSpec(None, tf.uint8)])  # as export_saved_model
    singles, batch = images
    for group in [image[None] for image in singles] + [batch]:
        onnx_out = run_onnx(session, group)
        served = {k: v.numpy() for k, v in serving(tf.constant(group)).items()}
        assert set(onnx_out) == set(served)
        assert {k: v.dtype for k, v in onnx_out.items()} == {k: v.dtype for k, v in served.items()}
        compare_detections(onnx_out, served, stats.setdefault("vs serving_default", {}), keys=served,
                           mask_mismatch=mask_mismatch)
        for b, image in enumerate(group):
            reference = keras_reference(model, image, image_size)
            compare_detections({k: onnx_out[k][b] for k in reference}, reference,
                               stats.setdefault("vs predict_step", {}), keys=reference)
    return session


def all_nodes(graph):
    """The nodes of an ONNX graph and of its subgraphs (``Loop`` and ``If`` bodies)."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from all_nodes(subgraph)


def scale_head(model, images, class_std=1.0, box_std=0.5):
    """Scales the (untrained) SSD head's class and box convolutions so that logits have a
    standard deviation of ``class_std`` and box deltas of ``box_std`` on ``images``: the random
    model then gives scores spread over (0, 1) and boxes near their anchors."""
    size = (model.image_size, model.image_size)
    padded = np.stack([resize_and_pad(image, size)[0].numpy() for image in images])
    out = model(padded)
    for prefix, key, target in (("class_conv", "class_logits", class_std), ("box_conv", "box_regression", box_std)):
        factor = target / float(np.std(keras.ops.convert_to_numpy(out[key])))
        for weight in model.head.weights:
            if weight.path.split("/")[-2].startswith(prefix):
                weight.assign(weight.numpy() * factor)


def test_ssd_net_onnx_equals_saved_model_and_predict_step(images, tmp_path):
    # seed and threshold chosen so that the selected scores lie far apart compared with how much
    # onnxruntime's scores differ from TensorFlow's (~1e-5 for this random, badly scaled network):
    # detections whose scores are closer may come out in the other order
    keras.utils.set_random_seed(2)
    model = SSDNet(num_classes=3, image_size=SSD_SIZE, backbone="resnet10", width_multiplier=0.125, fusion_channels=16,
                   decoder=SSDDecoder(score_threshold=0.8, max_detections=30))
    scale_head(model, images[0])
    stats, path = {}, str(tmp_path / "ssd_net" / "model.onnx")
    session = check_detector(model, path, images, stats)
    print("SSD-NET", stats)
    # real detections and padding rows were both compared
    counts = run_onnx(session, images[1])["num_detections"]
    assert min(s["detections"] for s in stats.values()) > 0 and counts.min() < 30, (stats, counts)
    assert stats["vs serving_default"]["score gap / difference"] > 4, stats  # no near-ties
    # every Resize is given its output size (tf2onnx's float32 `scales` 10 / 3 would make 9 rows)
    resizes = [node for node in all_nodes(onnx.load(path).graph) if node.op_type == "Resize"]
    assert len(resizes) >= 3 and all(len(node.input) == 4 and node.input[3] for node in resizes)
    # bad requests: onnxruntime's error (an exception), and the session keeps answering
    good = images[1][:1]
    bad = [good.astype("float32"), good[0], good[None], good[..., :1], np.concatenate([good, good[..., :1]], -1),
           np.zeros((1, 0, 30, 3), "uint8")]
    for request in bad:
        with pytest.raises(Exception, match="ONNXRuntimeError"):
            session.run(None, {"images": request})
    empty = run_onnx(session, np.zeros((0, 40, 30, 3), "uint8"))
    assert empty["detection_boxes"].shape == (0, 30, 4) and {v.shape[0] for v in empty.values()} == {0}
    again = run_onnx(session, good)
    np.testing.assert_array_equal(again["detection_boxes"], run_onnx(session, images[1])["detection_boxes"][:1])


def test_condinst_onnx_masks_equal_saved_model(images, tmp_path):
    model = tiny_condinst(max_detections=30)
    # the untrained scores sqrt(class x center-ness) lie in 0.50..0.53; the threshold applies to the product
    model.decoder.score_threshold = 0.51**2  # 5 to 25 detections an image
    stats = {}
    session = check_detector(model, str(tmp_path / "condinst" / "model.onnx"), images, stats)
    print("CondInst", stats)
    counts = run_onnx(session, images[1])["num_detections"]
    assert min(s["detections"] for s in stats.values()) > 0, stats
    assert stats["vs serving_default"]["mask pixels"] > 0 and counts.min() < 30, (stats, counts)


def test_pointins_onnx_masks_equal_saved_model(images, tmp_path):
    """PointINS on RetinaNet: the instance-aware convolution at the detections' anchors and the
    pasted 28x28 masks inside the ONNX graph. The pasted probabilities are sums of products
    (two matmuls) that the two runtimes round differently, so a pixel within a rounding of 0.5
    may flip: at most 1e-4 of the mask pixels may differ (measured: none on this model, 61 of
    1.6 million on a model with a weaker box tower)."""
    model = tiny_pointins(detector="retinanet", max_detections=12)
    stats = {}
    check_detector(model, str(tmp_path / "pointins" / "model.onnx"), images, stats, mask_mismatch=1e-4)
    print("PointINS", stats)
    assert min(s["detections"] for s in stats.values()) > 0, stats
    assert stats["vs serving_default"]["mask pixels"] > 0, stats


def test_faster_rcnn_onnx_equals_saved_model_and_predict_step(images, tmp_path):
    """The sibling-head detector (the TSD head exports the same way, with its deformable
    pooling: 90 s of conversion on 2 cores, checked by hand rather than in the suite)."""
    model = tiny_faster_rcnn(seed=6, max_detections=12)
    stats = {}
    session = check_detector(model, str(tmp_path / "faster_rcnn" / "model.onnx"), images, stats)
    print("FasterRCNN", stats)
    assert min(s["detections"] for s in stats.values()) > 0, stats
    assert run_onnx(session, images[1])["detection_boxes"].shape == (5, 12, 4)


def classifier_reference(model, images, image_size):
    padded = np.stack([resize_and_pad(image, image_size)[0].numpy() for image in images])
    return keras.ops.convert_to_numpy(model(padded, training=False))


@pytest.mark.parametrize("name", ["resnet_ce", "mobilenet_v2_softmax", "digit_convnet_grey"])
def test_classifier_onnx_equals_keras(name, images, tmp_path):
    keras.utils.set_random_seed(0)
    model, outputs = {
        "resnet_ce": (lambda: ResNet(10, num_classes=5, input_shape=(32, 32, 3), base_width=16, stem="small",
                                     attention="ce"), ("logits", "probs")),
        "mobilenet_v2_softmax": (lambda: MobileNetV2(alpha=0.35, num_classes=5, input_shape=(32, 32, 3),
                                                     classifier_activation="softmax"), ("probs",)),
        "digit_convnet_grey": (lambda: digit_convnet(), ("logits", "probs")),
    }[name]
    model = model()
    size, channels = model.input_shape[1:3], model.input_shape[-1]
    path = export_onnx(model, str(tmp_path / f"{name}.onnx"))
    session = session_of(path)
    assert [i.shape[-1] for i in session.get_inputs()] == [channels]
    assert sorted(o.name for o in session.get_outputs()) == sorted(outputs)
    singles, batch = images
    if channels == 1:
        singles, batch = [image[..., :1] for image in singles], batch[..., :1]
    worst = 0.0
    for group in [image[None] for image in singles] + [batch]:
        onnx_out = run_onnx(session, group)
        expected = classifier_reference(model, list(group), size)
        scores = onnx_out[outputs[0]]
        scale = np.abs(expected).max(axis=-1, keepdims=True)
        worst = max(worst, float((np.abs(scores - expected) / scale).max()))
        np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-4 * scale.max())
        np.testing.assert_array_equal(scores.argmax(-1), expected.argmax(-1))
        if "probs" in onnx_out and outputs[0] == "logits":
            np.testing.assert_allclose(onnx_out["probs"], keras.ops.convert_to_numpy(keras.ops.softmax(expected)),
                                       atol=1e-4)
    print(name, "max difference relative to the largest score", worst)
    with pytest.raises(Exception, match="ONNXRuntimeError"):
        session.run(None, {"images": np.zeros((1, 28, 28, channels + 1), "uint8")})


def test_export_argument_checks(tmp_path):
    keras.utils.set_random_seed(0)
    model = digit_convnet()
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, str(tmp_path / "a.onnx"), opset=9)
    with pytest.raises(ValueError, match="image_size"):
        export_onnx(model, str(tmp_path / "a.onnx"), image_size=(0, 28))
    with pytest.raises(ValueError, match=r"input size \(28, 28\)"):
        export_onnx(model, str(tmp_path / "a.onnx"), image_size=(32, 32))
    ssd = SSDNet(num_classes=3, image_size=SSD_SIZE, backbone="resnet10", width_multiplier=0.125, fusion_channels=16)
    with pytest.raises(ValueError, match="image_size"):
        export_onnx(ssd, str(tmp_path / "a.onnx"), image_size=(32, 32))
    with pytest.raises(ValueError, match="mask_resolution"):
        export_onnx(ssd, str(tmp_path / "a.onnx"), mask_resolution="input")
    unbuilt = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="built"):
        export_onnx(unbuilt, str(tmp_path / "a.onnx"), image_size=(8, 8))
    assert not os.path.exists(tmp_path / "a.onnx")
