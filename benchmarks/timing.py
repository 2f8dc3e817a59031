"""Timing shared by the benchmarks (no TensorFlow import, so that the scripts that also run
under the JAX backend can use it)."""

import statistics
import time

import keras
import numpy as np


def timed(fn, runs):
    """Seconds per call of ``fn`` (its result fetched to the host), over ``runs`` calls."""
    start = time.perf_counter()
    for _ in range(runs):
        keras.tree.map_structure(np.asarray, fn())
    return (time.perf_counter() - start) / runs


def measure(jobs, rounds, runs):
    """``(first_call, median)``: ``{key: seconds}`` of each job's first call (tracing,
    compilation, warm-up) and the median over ``rounds`` interleaved rounds of ``runs`` calls
    each (every job once per round, so that a slow phase of the machine hits them all)."""
    first_call = {key: timed(job, 1) for key, job in jobs.items()}
    seconds = {key: [] for key in jobs}
    for _ in range(rounds):
        for key, job in jobs.items():
            seconds[key].append(timed(job, runs))
    return first_call, {key: statistics.median(values) for key, values in seconds.items()}


def compiled(fn, model):
    """``fn(images)`` compiled with XLA under either backend (the model's variables are
    arguments under JAX, not constants baked into the program)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    import jax

    variables = model.variables

    def pure(values, images):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn(images)

    jitted = jax.jit(pure)
    return lambda images: jitted([v.value for v in variables], images)
