"""Pytest set-up shared by the whole suite.

The Keras backend is chosen by ``KERAS_BACKEND`` before Keras is imported; the README's
test command runs this suite once per backend. Test folders whose code is TensorFlow-only
by design (tf.data pipelines, the tf.distribute trainer, SavedModel export, the examples)
are not collected under other backends, and tests marked ``tensorflow_only`` are
deselected there.
"""

import os

import keras
import pytest

TENSORFLOW_ONLY_FOLDERS = ("data", "evaluation", "training", "export", "examples")


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
        return
    kept, deselected = [], []
    for item in items:
        (deselected if item.get_closest_marker("tensorflow_only") else kept).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Each test starts with float32 policy and a fresh name scope."""
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()
