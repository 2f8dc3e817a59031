"""keras_cvx: Keras 3 layers, heads, losses and example models for 2020 computer-vision papers.

``layers``, ``losses``, ``ops``, ``heads`` and ``models`` use ``keras.ops`` only and run under
every Keras backend. ``data``, ``training``, ``export`` and ``evaluation`` are TensorFlow jobs
(tf.data, tf.distribute, SavedModel) and are imported on first use.
"""

import importlib

from keras_cvx import heads, layers, losses, models, ops

__version__ = "0.1.0"

_TENSORFLOW_MODULES = ("data", "training", "export", "evaluation", "visualize")


def __getattr__(name):
    if name in _TENSORFLOW_MODULES:
        return importlib.import_module(f"keras_cvx.{name}")
    raise AttributeError(f"module 'keras_cvx' has no attribute {name!r}")
