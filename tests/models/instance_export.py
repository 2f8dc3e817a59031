"""Export -> reload checks shared by the instance-segmentation models (CondInst, PointINS):
the SavedModel's boxes, scores and full-image masks mapped to the original image size, against
``predict_step`` and a NumPy crop / bilinear resize / threshold, through ``serving_default``
and ``image_bytes``."""

import numpy as np
import pytest
from keras import ops


def numpy_resize_bilinear(image, height, width):
    """``tf.image.resize(..., "bilinear")`` (half-pixel centres, no antialiasing) of a 2-D map."""
    image = np.asarray(image, np.float64)

    def axis(values, size):
        positions = (np.arange(size) + 0.5) * len(values) / size - 0.5
        return np.interp(positions, np.arange(len(values)), values)  # clamps at the edges

    rows = np.apply_along_axis(axis, 0, image, height)
    return np.apply_along_axis(axis, 1, rows, width)


def numpy_masks_to_original(masks, original_size, image_size):
    """Model-frame 0/1 masks [N, S, S] -> crop to the resized image, bilinear resize to the
    original (H, W), values (thresholded at 0.5 by the caller)."""
    h, w = original_size
    scale = min(image_size / h, image_size / w)
    new_h, new_w = int(np.round(h * scale)), int(np.round(w * scale))
    return np.stack([numpy_resize_bilinear(m[:new_h, :new_w], h, w) for m in masks]), scale


def check_export_of_full_image_masks(model, tmp_path, size):
    """Exports ``model`` (input ``size`` x ``size``, 10 detections) and checks both signatures on
    two images of other sizes (module docstring)."""
    import tensorflow as tf

    from keras_cvx.data.transforms import resize_and_pad
    from keras_cvx.export.saved_model import export_saved_model

    rng = np.random.default_rng(8)
    originals = [rng.integers(0, 256, (40, 56, 3)).astype("uint8"), rng.integers(0, 256, (64, 48, 3)).astype("uint8")]
    path = export_saved_model(model, str(tmp_path / "model" / "1"), (size, size), normalized_coordinates=False)
    loaded = tf.saved_model.load(path)
    same_size = np.stack([originals[0], originals[0][::-1]])
    served = {k: v.numpy() for k, v in loaded.signatures["serving_default"](images=tf.constant(same_size)).items()}
    encoded = [tf.io.encode_png(image) for image in originals]
    served_bytes = {k: v.numpy() for k, v in loaded.signatures["image_bytes"](image_bytes=tf.stack(encoded)).items()}
    assert served["detection_masks"].shape == (2, 10, 40, 56)
    assert served_bytes["detection_masks"].shape == (2, 10, 64, 56)  # the batch's largest H and W
    cases = [(served, 0, same_size[0]), (served, 1, same_size[1]), (served_bytes, 0, originals[0]),
             (served_bytes, 1, originals[1])]
    for out, b, image in cases:
        padded, _ = resize_and_pad(image, (size, size))
        expected = {k: np.asarray(ops.convert_to_numpy(v)) for k, v in model.predict_step(padded.numpy()[None]).items()}
        n = expected["num_detections"][0]
        assert n > 0 and out["num_detections"][b] == n
        resized, scale = numpy_masks_to_original(expected["masks"][0, :n], image.shape[:2], size)
        h, w = image.shape[:2]
        x1, y1, x2, y2 = (expected["boxes"][0, :n] / scale).T
        boxes = np.stack([np.clip(y1, 0, h), np.clip(x1, 0, w), np.clip(y2, 0, h), np.clip(x2, 0, w)], -1)
        np.testing.assert_allclose(out["detection_boxes"][b, :n], boxes, atol=1e-3)
        np.testing.assert_allclose(out["detection_scores"][b, :n], expected["scores"][0, :n], atol=1e-5)
        masks = out["detection_masks"][b]
        assert set(np.unique(masks)) <= {0.0, 1.0}
        away = np.abs(resized - 0.5) > 1e-4  # pixels exactly between two mask values may round either way
        np.testing.assert_array_equal(masks[:n, :h, :w][away], (resized >= 0.5)[away])
        assert away.mean() > 0.95 and masks[:n].any()
        assert not masks[n:].any() and not masks[:, h:].any() and not masks[:, :, w:].any()
    with pytest.raises(ValueError, match="mask_resolution"):
        export_saved_model(model, str(tmp_path / "bad"), (size, size), mask_resolution="input")
