"""Runs a plain function compiled by the active backend's compiler: XLA through
``tf.function(jit_compile=True)`` under TensorFlow, ``jax.jit`` under JAX. Non-tensor
arguments are bound by the caller (``functools.partial``), so only arrays are traced."""

import keras
import numpy as np
from keras import tree


def run_compiled(fn, *arrays):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        compiled = tf.function(fn, jit_compile=True)
    elif backend == "jax":
        import jax

        compiled = jax.jit(fn)
    else:
        raise RuntimeError(f"no compiler wired for backend {backend!r}")
    outputs = compiled(*arrays)
    return tree.map_structure(lambda t: np.asarray(keras.ops.convert_to_numpy(t)), outputs)
