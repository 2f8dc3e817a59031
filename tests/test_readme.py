"""The README's Python snippets run as written (under every backend)."""

import os
import re

import numpy as np

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def python_snippets():
    with open(README, encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.DOTALL)


def test_block_snippet_runs_and_rezero_starts_as_the_identity():
    snippets = python_snippets()
    assert len(snippets) == 1
    namespace = {}
    exec(compile(snippets[0], "README.md", "exec"), namespace)
    model = namespace["model"]
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 16)).astype("float32")
    # ReZero's α starts at 0: the model's output is the DY-ReLU's
    before_rezero = namespace["keras"].Model(model.inputs, model.layers[-2].output)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(before_rezero(x)), rtol=1e-6, atol=1e-6)
    assert model.output_shape == (None, 32, 32, 16)
