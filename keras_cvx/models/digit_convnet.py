"""A small VGG-style CNN for 28x28 grey-level digits (uint8 or float values 0..255), the
teacher, student and embedding network of the KD-for-AutoAugment (arXiv 2003.11342) and Circle
Loss (arXiv 2002.10857) examples.

    x / 255 -> for each width w: 2 x [Conv3x3(w, no bias) -> BatchNorm -> ReLU] -> MaxPool 2x2
            -> GlobalAveragePooling -> Dense(hidden_units, ReLU) -> Dense(outputs) (linear)

Shapes: ``(B, H, W, 1)`` (28x28 by default) -> ``(B, outputs)``: logits for a classifier or an
embedding for metric learning.
"""

import keras

from keras_cvx.validation import require_positive_int


def digit_convnet(widths=(16, 32), hidden_units=64, outputs=10, input_shape=(28, 28, 1), name="digit_convnet"):
    """Functional ``keras.Model``; ``widths`` gives one conv pair + pooling per entry."""
    if not widths:
        raise ValueError(f"`widths` must hold at least one width, got {widths!r}.")
    for width in widths:
        require_positive_int("widths", width)
    require_positive_int("hidden_units", hidden_units)
    require_positive_int("outputs", outputs)
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    for width in widths:
        for _ in range(2):
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
            x = keras.layers.BatchNormalization()(x)
            x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(hidden_units, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(outputs)(x), name=name)
