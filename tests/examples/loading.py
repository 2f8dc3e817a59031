"""Loads an example script of ``examples/`` as a module (the folder is not a package)."""

import importlib.util
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_example(name):
    """The module of ``examples/<name>.py``, executed once per call."""
    path = os.path.join(REPO_ROOT, "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
