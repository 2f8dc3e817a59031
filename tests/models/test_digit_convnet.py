import keras
import numpy as np
import pytest

from keras_cvx.models.digit_convnet import digit_convnet


def test_shapes_and_parameter_count():
    model = digit_convnet(widths=(16, 32), hidden_units=64, outputs=10)
    assert model.output_shape == (None, 10)
    # conv 3x3: 1->16, 16->16, 16->32, 32->32 (no bias) + BN (4 per channel) + dense 32->64->10.
    convs = 9 * (1 * 16 + 16 * 16 + 16 * 32 + 32 * 32)
    batch_norms = 4 * (16 + 16 + 32 + 32)
    dense = 32 * 64 + 64 + 64 * 10 + 10
    assert model.count_params() == convs + batch_norms + dense
    out = model(np.zeros((3, 28, 28, 1), "float32"))
    assert tuple(out.shape) == (3, 10)


def test_input_is_scaled_by_one_over_255():
    model = digit_convnet(widths=(4,), hidden_units=8, outputs=3)
    images = np.random.default_rng(0).uniform(0, 255, (2, 28, 28, 1)).astype("float32")
    rescaled = keras.Model(model.input, model.layers[1].output)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(rescaled(images)), images / 255.0, rtol=1e-6)


def test_other_input_sizes_and_embedding_outputs():
    model = digit_convnet(widths=(8, 8, 8), hidden_units=16, outputs=5, input_shape=(32, 32, 1))
    assert model.output_shape == (None, 5)
    assert tuple(model(np.zeros((1, 32, 32, 1), "float32")).shape) == (1, 5)


@pytest.mark.parametrize("kwargs, argument", [({"widths": ()}, "widths"), ({"widths": (8, 0)}, "widths"), ({"hidden_units": 0}, "hidden_units"), ({"outputs": 1.5}, "outputs")])
def test_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        digit_convnet(**kwargs)
