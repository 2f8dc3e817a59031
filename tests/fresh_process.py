"""Runs a module of the test suite in a fresh TensorFlow process (for runs that configure
logical CPUs or a cluster before TensorFlow initialises)."""

import json
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module_for_json(module, out_path, timeout, args=()):
    """``python -m module out_path *args`` at the repository root under the TensorFlow backend; fails
    the test with the process's stderr tail if it fails; returns the JSON it wrote."""
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", module, str(out_path), *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out_path) as f:
        return json.load(f)
