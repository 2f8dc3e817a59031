"""ONNX export of a keras_cvx detector or classifier, checked with ONNX Runtime.

``export_onnx(model, path)`` converts one ``tf.function`` with ``tf2onnx`` (the ``[onnx]``
extra: ``pip install "keras_cvx[onnx]"``) into an ONNX file with the input and outputs of the
SavedModel's ``serving_default`` signature (``keras_cvx.export.saved_model``), built from the
same functions (``_Serving.detect_batch``), so that the ONNX model computes the SavedModel's
graph:

- input ``images``: uint8 ``[B, H, W, 3]``, any ``B, H, W`` (all images of a batch share
  ``H, W``, as in a tensor). Each image is resized keeping its aspect ratio and zero-padded at
  the bottom/right to the model's ``image_size`` (``keras_cvx.data.transforms.resize_and_pad``)
  inside the graph, the whole batch in one ``Resize``. The batch is cast to float32 before
  the resize (ONNX's ``Resize`` of uint8 returns uint8, rounded); the values are those of
  TensorFlow's resize of the uint8 images.
- detectors (models whose class defines ``predict_step``, as ``SSDNet``, ``CondInst``, ``PointINS`` and
  ``FasterRCNN``):
  ``detection_boxes`` float32 ``[B, N, 4]`` (``[ymin, xmin, ymax, xmax]``, normalised to
  ``[0, 1]`` by the original image size unless ``normalized_coordinates=False``),
  ``detection_scores`` float32 ``[B, N]``, ``detection_classes`` float32 ``[B, N]`` (-1 on
  padding rows), ``num_detections`` int32 ``[B]``, ``image_info`` float32 ``[B, 4, 2]`` and,
  for instance models, ``detection_masks`` float32 ``[B, N, H, W]`` 0/1 at the original
  resolution (see the SavedModel module for every convention). Decoding and NMS are inside
  the graph.
- classifiers (any other model: a Functional ``keras.Model`` such as ``ResNet``,
  ``MobileNetV2`` with ``include_top=True`` or ``digit_convnet``, one output ``[B, K]`` and a
  fixed input size): the input has the model's channel count (1 for grey digits) and the
  model receives the padded image in 0..255, as the detectors do; the outputs follow TF Model
  Garden's classification export: ``logits`` float32 ``[B, K]`` (the model's output) and
  ``probs`` (their softmax) when the model's last layer has no activation, ``probs`` alone
  (the model's output) when it ends in a softmax, otherwise ``scores`` (the model's output).

NMS: the graph holds our static-shape greedy NMS (``keras_cvx.ops.nms``) converted as it is,
its ``while`` loops becoming ONNX ``Loop`` nodes, not ONNX's ``NonMaxSuppression``: that op
returns a variable number of boxes per class, and its order among tied scores, its IoU
arithmetic at the threshold and its handling of NaN scores are the runtime's, so its
selections could differ from ``predict_step``'s; ours are those of ``predict_step`` by
construction.

Resize: ``tf2onnx`` turns a resize between static shapes into ``Resize`` with
``scales = float32(out / in)``, from which ONNX Runtime computes ``floor(in * scale)`` rows:
one short where the ratio rounds down (SSD-NET's Neighbor Erasing resizes 3 -> 10 at 160 px
and 10 -> 38 at 300 px, and ONNX Runtime refused the model). ``export_onnx`` converts
TensorFlow's ``ResizeBilinear`` / ``ResizeNearestNeighbor`` with its own handler, which gives
``Resize`` the output ``sizes`` instead.

Numbers: ONNX Runtime's kernels round and sum in other orders than TensorFlow's (its
``Resize`` included), so outputs agree to float32 rounding, not bitwise. Measured
(``tests/export/test_onnx.py``, random-weight test models, the bundled photographs and
synthetic images, batch 1 and 5) against the SavedModel's ``serving_default`` function and
against eager ``predict_step``: SSD-NET boxes within 1.8e-6 (normalised coordinates: a
fraction of the image size) and scores within 1.1e-5, CondInst boxes and scores within 1.2e-7,
Faster R-CNN (sibling head) boxes within 1.8e-7 and scores within 3e-8 (the TSD head's
deformable pooling converts too: the same counts, scores within 6e-8, checked by hand),
PointINS (RetinaNet) boxes within 7.9e-7 and scores within 6e-8, the same classes, counts and
masks (PointINS: on another random test model 3.8e-5 of the mask pixels differed, pasted
probabilities -- two matmuls -- within a rounding of the 0.5 threshold); classifiers' outputs
within 1.2e-5 of their largest value. Two detections whose scores are closer than that difference may come out in the
other order, and a score or an IoU that close to a threshold may go either way, as between
two TensorFlow builds. A ``mixed_float16`` model converts (float16 inside, float32 outputs)
and agrees to float16 precision.

Opset: 17 by default; 13 to 18 (the newest ``tf2onnx`` 1.17 writes) convert and give the
same outputs (checked with ``onnxruntime`` 1.32 on the SSD-NET and CondInst test models).

Bad requests: the input is declared uint8 ``[B, H, W, C]`` with ``C`` fixed, so ONNX Runtime
refuses a wrong dtype, rank or channel count with an exception (``InvalidArgument``) before
running, and the session keeps answering. Limitations (the SavedModel's run-time checks are
``Assert`` ops, which ONNX has no op for, so ``tf2onnx`` drops them): an empty batch returns
empty outputs instead of an error, and an image of zero height or width fails in a
``Resize`` node with ONNX Runtime's message rather than ours. There is no ``image_bytes``
input: ONNX has no image decoder; decode the images on the client.

Conversion takes 10 to 30 s for the small test models on 2 CPU cores, mostly ``tf2onnx``'s
graph optimisers. They run without ``tf2onnx``'s error catching (``TF2ONNX_CATCH_ERRORS``
set to ``FALSE`` during the conversion), which copies the whole graph before each optimiser
pass and doubles the time; an optimiser that fails then fails the export instead of being
skipped silently.

Example::

    from keras_cvx.export import export_onnx
    export_onnx(model, "saved_models/ssd_net/model.onnx")   # a built SSDNet

    import numpy as np, onnxruntime
    session = onnxruntime.InferenceSession("saved_models/ssd_net/model.onnx",
                                           providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()],
                       session.run(None, {"images": np.zeros((1, 480, 640, 3), np.uint8)})))
    outputs["detection_boxes"].shape                        # (1, 100, 4)
"""

import contextlib
import os

import keras
import tensorflow as tf

from keras_cvx.export.saved_model import _checked_serving, _prepare_batch

DEFAULT_OPSET = 17
"""The ONNX opset ``export_onnx`` writes by default."""


def _is_detector(model):
    """Whether ``model`` is exported as a detector: its class defines ``predict_step`` (every
    keras_cvx detector returns its detections from it)."""
    return type(model).predict_step is not keras.Model.predict_step


def _model_image_size(model):
    """``(height, width)`` of the model's input: its ``image_size`` attribute (detectors) or its
    input shape (Functional models); None when neither is known."""
    size = getattr(model, "image_size", None)
    if size is not None:
        return (size, size) if isinstance(size, int) else tuple(size)
    shape = _input_shape(model)
    if shape is not None and len(shape) == 4 and None not in shape[1:3]:
        return tuple(int(s) for s in shape[1:3])
    return None


def _input_shape(model):
    try:
        shape = model.input_shape
    except (AttributeError, ValueError):
        return None
    return tuple(shape) if isinstance(shape, (tuple, list)) and not isinstance(shape[0], (tuple, list)) else None


def _classifier_head(model):
    """The output names of a classifier export: ``("logits", "probs")``, ``("probs",)`` or
    ``("scores",)`` from the activation of the model's last layer."""
    layer = model.layers[-1] if model.layers else None
    activation = getattr(layer, "activation", None)
    if isinstance(layer, keras.layers.Softmax) or activation is keras.activations.softmax:
        return ("probs",)
    if activation is None or activation is keras.activations.linear:
        return ("logits", "probs")
    return ("scores",)


class _Classifying:
    """The body of a classifier's ONNX graph: pre-processing as the detectors', then the model."""

    def __init__(self, model, image_size):
        self.model = model
        self.image_size = image_size
        self.names = _classifier_head(model)

    def classify_batch(self, images):
        padded, _, _ = _prepare_batch(images, self.image_size)
        outputs = self.model(padded, training=False)
        if isinstance(outputs, (dict, list, tuple)) or len(outputs.shape) != 2:
            raise ValueError("A classifier exported to ONNX must have one output [batch, classes], got "
                             f"{keras.tree.map_structure(lambda t: tuple(t.shape), outputs)}.")
        outputs = tf.cast(outputs, tf.float32)
        if self.names == ("logits", "probs"):
            return {"logits": outputs, "probs": tf.nn.softmax(outputs, axis=-1)}
        return {self.names[0]: outputs}


def _resize_to_sizes(ctx, node, name, args):
    """``tf2onnx`` handler (``custom_op_handlers``) of TensorFlow's ``ResizeBilinear`` and
    ``ResizeNearestNeighbor``: an ONNX ``Resize`` given its output ``sizes`` (the batch and
    channels of its input, then the target height and width; see "Resize" in the module
    docstring), between NHWC <-> NCHW transposes, with TensorFlow's coordinate modes:
    ``half_pixel`` (bilinear) or ``tf_half_pixel_for_nn`` (nearest) with ``half_pixel_centers``,
    ``align_corners``, else ``asymmetric``."""
    import numpy as np
    from onnx import TensorProto
    from tf2onnx import utils

    nearest = node.type == "ResizeNearestNeighbor"
    if node.get_attr_value("align_corners", 0):
        mode, nearest_mode = "align_corners", "round_prefer_ceil"
    elif node.get_attr_value("half_pixel_centers", 0):
        mode, nearest_mode = ("tf_half_pixel_for_nn" if nearest else "half_pixel"), "floor"
    else:
        mode, nearest_mode = "asymmetric", "floor"
    images, size = node.input
    nchw = ctx.make_node("Transpose", [images], attr={"perm": [0, 3, 1, 2]})
    start, stop = (ctx.make_const(utils.make_name("resize_slice"), np.array([v], np.int64)) for v in (0, 2))
    shape = ctx.make_node("Shape", [nchw.output[0]])
    batch_channels = ctx.make_node("Slice", [shape.output[0], start.output[0], stop.output[0]])
    height_width = ctx.make_node("Cast", [size], attr={"to": TensorProto.INT64})
    sizes = ctx.make_node("Concat", [batch_channels.output[0], height_width.output[0]], attr={"axis": 0})
    empty = ctx.make_const(utils.make_name("resize_empty"), np.array([], np.float32))
    resize = ctx.make_node(
        "Resize", [nchw.output[0], empty.output[0], empty.output[0], sizes.output[0]],
        attr={"mode": "nearest" if nearest else "linear", "coordinate_transformation_mode": mode,
              "nearest_mode": nearest_mode},
    )
    shapes, dtypes = node.output_shapes, node.output_dtypes
    ctx.remove_node(node.name)
    ctx.make_node("Transpose", resize.output, attr={"perm": [0, 2, 3, 1]}, name=node.name, outputs=node.output,
                  shapes=shapes, dtypes=dtypes)


@contextlib.contextmanager
def _environment(name, value):
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def export_onnx(model, path, image_size=None, normalized_coordinates=True, mask_resolution="auto",
                opset=DEFAULT_OPSET):
    """Writes ``model`` as an ONNX file with the input and outputs of the SavedModel's
    ``serving_default`` (see the module docstring) and returns ``path``.

    Args:
        model: a built keras_cvx detector (``SSDNet``, ``CondInst``, ``PointINS``, ``FasterRCNN``: any model whose
            ``predict_step(images)`` follows the keras_cvx detection contract) or a built
            classifier (one output ``[B, K]``, a fixed input size).
        path: the ``.onnx`` file to write (its folder is created).
        image_size: ``(height, width)`` of the model's input; default: the model's
            ``image_size`` (detectors) or its input shape (classifiers).
        normalized_coordinates: detectors: ``detection_boxes`` normalised to ``[0, 1]``
            (default) or in original-image pixels.
        mask_resolution: detectors with masks: ``"auto"`` (default), ``"original"`` or
            ``"model"``, as ``export_saved_model``.
        opset: the ONNX opset (default ``DEFAULT_OPSET``, 17).

    Shapes: input ``images`` uint8 ``[B, H, W, C]`` (``C`` = 3 for detectors, the model's
    channels for classifiers); outputs as the module docstring says.

    Example:

    >>> import os, tempfile
    >>> import keras, numpy as np, onnxruntime
    >>> from keras_cvx.export import export_onnx
    >>> inputs = keras.Input((8, 8, 3))
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(inputs)))
    >>> path = export_onnx(model, os.path.join(tempfile.mkdtemp(), "classifier.onnx"))
    >>> session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    >>> sorted(output.name for output in session.get_outputs())
    ['logits', 'probs']
    >>> session.run(["probs"], {"images": np.zeros((3, 20, 10, 3), np.uint8)})[0].shape
    (3, 2)
    """
    import tf2onnx  # the [onnx] extra

    if isinstance(opset, bool) or not isinstance(opset, int) or not 13 <= opset <= 18:
        raise ValueError(f"`opset` must be an int in [13, 18] (tf2onnx 1.17 writes up to 18), got {opset!r}.")
    if not model.built:
        raise ValueError("`model` must be built (call it once on a batch) before export.")
    if image_size is None:
        image_size = _model_image_size(model)
        if image_size is None:
            raise ValueError("`image_size` must be given for a model without an `image_size` attribute or a "
                             "fixed input size.")
    if _is_detector(model):
        body = _checked_serving(model, image_size, normalized_coordinates, mask_resolution).detect_batch
        channels = 3
    else:
        image_size = _checked_serving(model, image_size).image_size  # the same argument checks
        model_size, shape = _model_image_size(model), _input_shape(model)
        if model_size is not None and model_size != image_size:
            raise ValueError(f"`image_size` {image_size} is not the model's input size {model_size}.")
        channels = shape[-1] if shape is not None and shape[-1] is not None else 3
        body = _Classifying(model, image_size).classify_batch

    def serve(images):
        # float32 before the resize: ONNX's Resize of uint8 would round its output to uint8
        return body(tf.cast(images, tf.float32))

    signature = [tf.TensorSpec([None, None, None, channels], tf.uint8, name="images")]
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with _environment("TF2ONNX_CATCH_ERRORS", "FALSE"):
        handlers = {op: (_resize_to_sizes, []) for op in ("ResizeBilinear", "ResizeNearestNeighbor")}
        tf2onnx.convert.from_function(tf.function(serve, input_signature=signature), input_signature=signature,
                                      opset=opset, custom_op_handlers=handlers, output_path=path)
    return path
