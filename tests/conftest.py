"""Pytest set-up shared by the whole suite.

The Keras backend is chosen by ``KERAS_BACKEND`` before Keras is imported; the README's
test command runs this suite once per backend. Test folders whose code is TensorFlow-only
by design (tf.data pipelines, the tf.distribute trainer, SavedModel export, the examples)
are not collected under other backends, and tests marked ``tensorflow_only`` are
deselected there.

Tests marked ``single_backend`` are model-level checks with nothing backend-specific in them
(backbone option grids, configs, training recipes): they compose layers, ops and losses
whose own tests run under every backend, and they run under TensorFlow only, because under
JAX every new op shape of an eager model build is compiled first (10-30 s per model here).
Tests marked ``jax_only`` (a backend-independent training property that TensorFlow traces
far more slowly) are deselected under TensorFlow.

Under JAX, random initializers use the non-partitionable threefry (what JAX used before
0.5: the same distributions, 20x faster to compile on the CPU) and XLA skips most
optimisations (correct results, faster compilation of the many tiny test programs).
"""

import os

import keras
import pytest

TENSORFLOW_ONLY_FOLDERS = ("data", "evaluation", "training", "export", "examples")
MARKERS_DESELECTED_UNDER_OTHER_BACKENDS = ("tensorflow_only", "single_backend")

if keras.backend.backend() == "jax":
    import jax

    jax.config.update("jax_threefry_partitionable", False)
    jax.config.update("jax_disable_most_optimizations", True)


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend: {keras.backend.backend()}"


def pytest_ignore_collect(collection_path, config):
    if keras.backend.backend() == "tensorflow":
        return None
    tests_root = os.path.dirname(__file__)
    relative = os.path.relpath(str(collection_path), tests_root)
    return relative.split(os.sep)[0] in TENSORFLOW_ONLY_FOLDERS or None


def pytest_collection_modifyitems(config, items):
    if keras.backend.backend() == "tensorflow":
        markers = ("jax_only",)
    else:
        markers = MARKERS_DESELECTED_UNDER_OTHER_BACKENDS
    kept, deselected = [], []
    for item in items:
        deselect = any(item.get_closest_marker(name) for name in markers)
        (deselected if deselect else kept).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Each test starts with float32 policy and a fresh name scope. ``clear_session`` skips its
    ``gc.collect()`` (0.1-3 s per test with TensorFlow's object graphs: tests/losses and
    tests/ops took 100 s with it, 74 s without); Python's own collector still runs."""
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session(free_memory=False)
