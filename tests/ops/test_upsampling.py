import functools

import numpy as np
import pytest
from keras import ops

from keras_cvx.ops.upsampling import aligned_bilinear
from tests.ops.compiled import run_compiled


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _as_column(values):
    return np.asarray(values, "float32").reshape(1, -1, 1, 1)


def test_spec_vectors_1d():
    x = _as_column([0, 1, 2])  # a width-1 map: every output column equals the 1-D result
    out2, out4 = _np(aligned_bilinear(x, 2)), _np(aligned_bilinear(x, 4))
    assert out2.shape == (1, 6, 2, 1) and out4.shape == (1, 12, 4, 1)
    np.testing.assert_allclose(out2[0, :, :, 0], np.repeat([[0, 0, 0.5, 1, 1.5, 2]], 2, 0).T)
    np.testing.assert_allclose(
        out4[0, :, :, 0], np.repeat([[0, 0, 0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2]], 4, 0).T
    )
    # the same along the width axis
    np.testing.assert_allclose(_np(aligned_bilinear(x.reshape(1, 1, 3, 1), 2))[0, 0, :, 0], [0, 0, 0.5, 1, 1.5, 2])


def test_spec_vector_2d_and_identity():
    x = np.array([[0, 1], [2, 3]], "float32").reshape(1, 2, 2, 1)
    expected = [[0, 0, 0.5, 1], [0, 0, 0.5, 1], [1, 1, 1.5, 2], [2, 2, 2.5, 3]]
    np.testing.assert_allclose(_np(aligned_bilinear(x, 2))[0, :, :, 0], expected)
    assert aligned_bilinear(x, 1) is x


def _reference_procedure(x, f):
    """The reference's recipe on one axis-0 vector: pad end, align_corners resize, pad start, crop."""
    h = len(x)
    padded = np.concatenate([x, x[-1:]])
    out_len = f * h + 1
    pos = np.arange(out_len) * (len(padded) - 1) / (out_len - 1)  # align_corners=True
    resized = np.interp(pos, np.arange(len(padded)), padded)
    resized = np.concatenate([np.repeat(resized[:1], f // 2), resized])
    return resized[: f * h]


@pytest.mark.parametrize("factor", [2, 3, 4, 8])
def test_matches_reference_recipe_compiled(factor):
    rng = np.random.default_rng(factor)
    x = rng.normal(size=(2, 5, 4, 3)).astype("float32")
    out = run_compiled(functools.partial(aligned_bilinear, factor=factor), x)
    assert out.shape == (2, 5 * factor, 4 * factor, 3)
    expected = np.apply_along_axis(_reference_procedure, 1, x, factor)
    expected = np.apply_along_axis(_reference_procedure, 2, expected, factor)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_dtype_and_validation():
    x = np.ones((1, 3, 3, 2), "float16")
    assert ops.dtype(aligned_bilinear(x, 2)) == "float16"
    with pytest.raises(ValueError, match="factor"):
        aligned_bilinear(x, 0)


@pytest.mark.parametrize("factor", [2, 4])
def test_gather_method_matches_reference_recipe_compiled(factor):
    rng = np.random.default_rng(10 + factor)
    x = rng.normal(size=(2, 3, 6, 2)).astype("float32")
    out = run_compiled(functools.partial(aligned_bilinear, factor=factor, method="gather"), x)
    expected = np.apply_along_axis(_reference_procedure, 1, x, factor)
    expected = np.apply_along_axis(_reference_procedure, 2, expected, factor)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    with pytest.raises(ValueError, match="method"):
        aligned_bilinear(x, 2, method="nearest")
