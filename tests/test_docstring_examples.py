"""Runs the ``Example:`` sections of keras_cvx's docstrings as doctests under the current backend.

Every module whose source holds a ``>>>`` example is collected (one test per module, so
``pytest --durations`` shows what each module's examples cost), unless it is named in one of
the lists below with its reason (an entry names a module or a whole package). Each docstring runs in a fresh namespace, so an example must
import what it uses and runs when pasted into a new Python session; outputs are compared with
``doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE`` and must not depend on the backend (shapes
via ``tuple(x.shape)``, values via ``keras.ops.convert_to_numpy`` and rounding).

``test_public_api_is_documented`` checks that every class and function exported by
``keras_cvx.layers``, ``keras_cvx.losses`` and ``keras_cvx.ops`` has ``Args:`` and a runnable
example, so a new public name cannot land without one.
"""

import doctest
import importlib
import inspect
import os

import keras
import pytest

import keras_cvx

PACKAGE_DIR = os.path.dirname(keras_cvx.__file__)

TENSORFLOW_ONLY_PACKAGES = ("keras_cvx.data", "keras_cvx.training", "keras_cvx.export", "keras_cvx.evaluation",
                            "keras_cvx.visualize")
"""TensorFlow jobs by design (tf.data, tf.distribute, SavedModel; see ``tests/conftest.py``): their
examples run under the TensorFlow backend only (marked ``tensorflow_only``)."""

EXCLUDED = {}
"""Modules whose examples are not run here, with the reason (none today)."""

SLOW_UNDER_JAX = {
    # module or package: CPU seconds its examples took under JAX on a 2-core development machine
    "keras_cvx.heads.condinst": 30,
    "keras_cvx.heads.fcos": 30,
    "keras_cvx.heads.pointins": 3,
    "keras_cvx.heads.retinanet": 2,
    "keras_cvx.heads.rpn": 5,
    "keras_cvx.heads.tsd": 7,
    "keras_cvx.heads.ssd": 15,
    "keras_cvx.layers.channel_equilibrium": 6,
    "keras_cvx.layers.deformable_roi_pool": 5,
    "keras_cvx.layers.dynamic_mask_head": 2,
    "keras_cvx.layers.dense_detections": 4,
    "keras_cvx.layers.fcos_decoder": 6,
    "keras_cvx.layers.instance_aware_conv": 3,
    "keras_cvx.layers.neighbor_transferring": 10,
    "keras_cvx.layers.proposal_generator": 5,
    "keras_cvx.layers.rcnn_decoder": 5,
    "keras_cvx.layers.retinanet_decoder": 3,
    "keras_cvx.layers.nn_fusion": 3,
    "keras_cvx.layers.rezero": 14,
    "keras_cvx.layers.slim_conv": 13,
    "keras_cvx.layers.ssd_decoder": 4,
    "keras_cvx.models.backbones": 40,
    "keras_cvx.models.condinst": 120,
    "keras_cvx.models.faster_rcnn": 120,
    "keras_cvx.models.pointins": 60,
    "keras_cvx.models.label_encoders.fcos": 6,
    "keras_cvx.models.label_encoders.retinanet": 3,
    "keras_cvx.models.label_encoders.roi": 5,
    "keras_cvx.models.label_encoders.rpn": 5,
    "keras_cvx.models.label_encoders.ssd": 4,
    "keras_cvx.models.necks.fpn": 9,
    "keras_cvx.ops.deformable_roi_pool": 18,
    "keras_cvx.ops.masks": 3,
    "keras_cvx.ops.matching": 8,
    "keras_cvx.ops.nms": 5,
    "keras_cvx.ops.roi_align": 13,
}
"""Examples that pass under JAX but cost far more there than under TensorFlow, where each module
takes well under a second (plus TensorFlow's one-time ~3 s AutoGraph set-up, paid by the first
example that maps a function over a batch): JAX compiles every eager op for each new shape
(~50 ms) and every random initializer for each weight shape (~0.5 s; ~10 s for the first
rank-4 kernel with JAX's default ``jax_threefry_partitionable=True``). They run under
TensorFlow only, which keeps this file near 40 s per backend; the other modules' examples run
under both."""


OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Replaces ``tests/conftest.py``'s fixture of the same name for this file: the dtype policy
    is reset around every test, but ``keras.backend.clear_session()`` (~0.3 s per call) runs once
    for the whole file (``_clear_session_once``); examples do not depend on layer names."""
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture(autouse=True, scope="module")
def _clear_session_once():
    yield
    keras.backend.clear_session()


def _module_names():
    """Dotted names of the modules whose source has a ``>>>`` example (found without importing)."""
    names = []
    for root, _, files in os.walk(PACKAGE_DIR):
        for file in files:
            if not file.endswith(".py"):
                continue
            path = os.path.join(root, file)
            with open(path, encoding="utf-8") as handle:
                if ">>> " not in handle.read():
                    continue
            relative = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[: -len(".py")]
            parts = relative.split(os.sep)
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


MODULES_WITH_EXAMPLES = _module_names()


def _listed(name, entries):
    """The entry of ``entries`` (a module or a package) that covers module ``name``, or None."""
    return next((entry for entry in entries if name == entry or name.startswith(entry + ".")), None)


def _param(name):
    marks = []
    if _listed(name, TENSORFLOW_ONLY_PACKAGES):
        marks.append(pytest.mark.tensorflow_only)
    if _listed(name, SLOW_UNDER_JAX):
        marks.append(pytest.mark.single_backend)  # the layers they build are tested under JAX in tests/
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("module_name", [_param(n) for n in MODULES_WITH_EXAMPLES if not _listed(n, EXCLUDED)])
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    tests = [t for t in doctest.DocTestFinder().find(module, module_name, globs={}) if t.examples]
    assert tests, f"{module_name} has '>>> ' in its source but no docstring example doctest can find"
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    for test in tests:
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples failed in {module_name} (above)"


def test_lists_name_existing_modules():
    """Every entry of the lists above is a module or package of keras_cvx (no stale entries)."""
    for entry in (*TENSORFLOW_ONLY_PACKAGES, *EXCLUDED, *SLOW_UNDER_JAX):
        path = os.path.join(os.path.dirname(PACKAGE_DIR), *entry.split("."))
        assert os.path.isdir(path) or os.path.isfile(path + ".py"), entry
    assert not set(EXCLUDED) & set(SLOW_UNDER_JAX)


@pytest.mark.parametrize("package", ["keras_cvx.layers", "keras_cvx.losses", "keras_cvx.ops"])
def test_public_api_is_documented(package):
    module = importlib.import_module(package)
    incomplete = []
    for name in sorted(vars(module)):
        obj = getattr(module, name)
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        doc = obj.__doc__ or ""
        summary = doc.strip().split("\n")[0]
        missing = [part for part, present in (("summary", summary), ("Args:", "Args:" in doc),
                                              ("Example:", "Example:\n" in doc), (">>>", ">>> " in doc)) if not present]
        if missing:
            incomplete.append(f"{name}: {', '.join(missing)}")
    assert not incomplete, incomplete
