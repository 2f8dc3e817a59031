"""Tests for keras_cvx.data.transforms against hand-computed values."""

import numpy as np
import pytest
import tensorflow as tf

from keras_cvx.data.transforms import clip_boxes, horizontal_flip, resize_and_pad, scale_boxes


def test_resize_and_pad_halves_by_block_average_and_pads_zeros():
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    padded, scale = resize_and_pad(image, (2, 6))
    assert padded.dtype == tf.float32 and padded.shape == (2, 6, 3)
    assert float(scale) == 0.5
    # bilinear with half-pixel centres at factor 2 = mean of each 2x2 block
    expected = image.astype(np.float32).reshape(2, 2, 3, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(padded.numpy()[:, :3], expected, atol=1e-4)
    np.testing.assert_array_equal(padded.numpy()[:, 3:], 0.0)


def test_resize_and_pad_upscales_with_rounded_size():
    image = np.full((3, 5, 3), 200.0, np.float32)
    padded, scale = resize_and_pad(image, (10, 10))
    assert float(scale) == 2.0
    np.testing.assert_allclose(padded.numpy()[:6, :10], 200.0, atol=1e-4)
    np.testing.assert_array_equal(padded.numpy()[6:], 0.0)

    padded, scale = resize_and_pad(np.ones((7, 3, 3), np.uint8) * 255, (8, 8))
    assert float(scale) == pytest.approx(8 / 7)
    # round(3 * 8 / 7) = round(3.43) = 3 columns of content
    np.testing.assert_allclose(padded.numpy()[:, :3], 255.0, atol=1e-3)
    np.testing.assert_array_equal(padded.numpy()[:, 3:], 0.0)


def test_resize_and_pad_in_tf_function_with_unknown_size():
    fn = tf.function(
        lambda x: resize_and_pad(x, (16, 32)),
        input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)],
    )
    padded, scale = fn(tf.zeros((40, 20, 3), tf.uint8))
    assert padded.shape == (16, 32, 3)
    assert float(scale) == pytest.approx(0.4)


def test_resize_and_pad_rejects_bad_size():
    with pytest.raises(ValueError, match="output_size"):
        resize_and_pad(np.zeros((4, 4, 3), np.uint8), (0, 4))


def test_horizontal_flip_image_and_boxes():
    image = np.arange(2 * 5 * 3).reshape(2, 5, 3)
    boxes = np.array([[0.0, 0.0, 2.0, 1.0], [1.5, 0.5, 5.0, 2.0]], np.float32)
    flipped, fboxes = horizontal_flip(image, boxes)
    np.testing.assert_array_equal(flipped.numpy(), image[:, ::-1])
    np.testing.assert_allclose(fboxes.numpy(), [[3.0, 0.0, 5.0, 1.0], [0.0, 0.5, 3.5, 2.0]])
    # flipping twice is the identity
    back, bboxes = horizontal_flip(flipped, fboxes)
    np.testing.assert_array_equal(back.numpy(), image)
    np.testing.assert_allclose(bboxes.numpy(), boxes)


def test_scale_and_clip_boxes():
    boxes = np.array([[-2.0, 1.0, 12.0, 4.0]], np.float32)
    np.testing.assert_allclose(scale_boxes(boxes, 0.5).numpy(), [[-1.0, 0.5, 6.0, 2.0]])
    np.testing.assert_allclose(clip_boxes(boxes, (3, 10)).numpy(), [[0.0, 1.0, 10.0, 3.0]])
