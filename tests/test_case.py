"""The one harness every layer and loss test uses.

``run_layer_test`` and ``run_loss_test`` check a class the same way every time (the way
keras-hub's ``run_layer_test`` does, written anew for this package):

* ``get_config`` -> ``from_config`` round trip, and every constructor argument in the config;
* ``keras.saving.serialize_keras_object`` / ``deserialize_keras_object`` round trip;
* build from shapes, then the weight counts;
* a symbolic call on ``keras.Input`` (``KerasTensor``) and ``compute_output_shape``;
* an eager call, compared with ``expected_output`` when given;
* the same call compiled (``jit_compile=True``: XLA under TensorFlow, ``jax.jit`` under JAX);
* one compiled ``fit`` step: the loss is finite before and after, and the weights move;
* ``mixed_float16`` and ``mixed_bfloat16``: output dtypes follow the compute dtype (or the
  dtype the class documents), weights stay float32, outputs stay finite, and with the
  float32 layer's weights the outputs equal the float32 outputs within
  ``MIXED_PRECISION_TOLERANCE`` (relative to the largest float32 output magnitude: float16
  keeps 11 significant bits, bfloat16 8, and a few layers of rounding add up);
* ``.keras`` save -> load with ``safe_mode=True`` gives equal outputs.
"""

import os
import tempfile

import keras
import numpy as np
from keras import ops
from keras import tree

MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")
MIXED_PRECISION_TOLERANCE = {"mixed_float16": 1e-2, "mixed_bfloat16": 5e-2}


def _to_numpy(structure):
    return tree.map_structure(lambda t: np.asarray(ops.convert_to_numpy(t)), structure)


def _assert_all_close(actual, expected, atol, rtol, message=""):
    actual, expected = _to_numpy(actual), _to_numpy(expected)
    tree.assert_same_structure(actual, expected)
    for a, e in zip(tree.flatten(actual), tree.flatten(expected)):
        np.testing.assert_allclose(
            a.astype(np.float64), np.asarray(e, np.float64), atol=atol, rtol=rtol, err_msg=message
        )


def _input_spec(input_data):
    """keras.Input tensors matching `input_data` (batch dimension left unknown)."""
    return tree.map_structure(
        lambda x: keras.Input(shape=np.shape(x)[1:], dtype=str(np.asarray(x).dtype)),
        input_data,
    )


def _shapes(input_data):
    return tree.map_structure(lambda x: tuple(np.shape(x)), input_data)


def _flat_shapes(structure):
    """Flattens a structure of shapes, treating a tuple/list of ints (or None) as a leaf."""
    if isinstance(structure, dict):
        return [s for key in sorted(structure) for s in _flat_shapes(structure[key])]
    if isinstance(structure, (list, tuple)) and all(d is None or isinstance(d, (int, np.integer)) for d in structure):
        return [tuple(None if d is None else int(d) for d in structure)]
    return [s for item in structure for s in _flat_shapes(item)]


def _batch_size(input_data):
    return int(np.shape(tree.flatten(input_data)[0])[0])


def _float_outputs(outputs):
    return [t for t in tree.flatten(outputs) if "float" in str(keras.backend.standardize_dtype(t.dtype))]


def _call(layer, inputs, call_kwargs):
    if isinstance(inputs, (list, tuple)) and not getattr(layer, "_call_takes_sequence", False):
        return layer(*inputs, **call_kwargs)
    return layer(inputs, **call_kwargs)


class SquaredOutputsModel(keras.Model):
    """A model around one layer whose loss is the mean square of the layer's outputs."""

    def __init__(self, layer, call_kwargs, **kwargs):
        super().__init__(**kwargs)
        self.inner = layer
        self.call_kwargs = call_kwargs

    def call(self, inputs, training=None):
        return _call(self.inner, inputs, dict(self.call_kwargs, training=training))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        terms = [ops.mean(ops.square(ops.cast(t, "float32"))) for t in _float_outputs(y_pred)]
        return ops.sum(ops.stack(terms)) + ops.sum(ops.stack([0.0] + [ops.cast(l, "float32") for l in self.losses]))


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    expected_output_shape=None,
    expected_output=None,
    expected_num_trainable_weights=None,
    expected_num_non_trainable_weights=None,
    call_kwargs=None,
    run_training_check=True,
    run_mixed_precision_check=True,
    run_saving_check=True,
    mixed_precision_output_dtype=None,
    compare_mixed_precision_values=True,
    tolerance=1e-5,
    jit_tolerance=1e-4,
):
    """Checks a layer class end to end.

    Args:
        layer_cls: the class under test.
        init_kwargs: constructor arguments (JSON-serialisable; nested layers allowed).
        input_data: a NumPy array, or a list/tuple/dict of them, with a batch dimension.
            A list or tuple is passed as positional arguments.
        expected_output_shape: the eager output shape(s), structure like the output.
        expected_output: values to compare with (``tolerance`` absolute and relative).
        expected_num_trainable_weights / expected_num_non_trainable_weights: counts of
            weight tensors after building.
        call_kwargs: extra keyword arguments for every call.
        mixed_precision_output_dtype: the output dtype under a mixed policy when it is
            not the compute dtype (e.g. "float32" for a layer that documents float32 output).
        compare_mixed_precision_values: compare the mixed-precision outputs with the float32
            ones (``MIXED_PRECISION_TOLERANCE``); turn off only for outputs that are discrete
            selections (kept boxes of an NMS), where rounding may change which one is kept.
    """
    call_kwargs = dict(call_kwargs or {})
    input_data = tree.map_structure(np.asarray, input_data)

    # Config round trip: every constructor argument is in the config.
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    missing = [k for k in init_kwargs if k not in config]
    assert not missing, f"get_config() of {layer_cls.__name__} lacks {missing}"
    revived = layer_cls.from_config(config)
    assert revived.get_config() == config

    serialized = keras.saving.serialize_keras_object(layer)
    deserialized = keras.saving.deserialize_keras_object(serialized)
    assert type(deserialized) is layer_cls
    assert deserialized.get_config() == config

    # Build from shapes, then weight counts.
    layer = layer_cls(**init_kwargs)
    shapes = _shapes(input_data)
    if isinstance(input_data, (list, tuple)) and not getattr(layer, "_call_takes_sequence", False):
        layer.build(*shapes)
    else:
        layer.build(shapes)
    assert layer.built
    if expected_num_trainable_weights is not None:
        assert len(layer.trainable_weights) == expected_num_trainable_weights, [
            w.path for w in layer.trainable_weights
        ]
    if expected_num_non_trainable_weights is not None:
        assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights, [
            w.path for w in layer.non_trainable_weights
        ]

    # Symbolic call.
    symbolic_layer = layer_cls(**init_kwargs)
    symbolic_inputs = _input_spec(input_data)
    symbolic_outputs = _call(symbolic_layer, symbolic_inputs, call_kwargs)
    for t in tree.flatten(symbolic_outputs):
        assert isinstance(t, keras.KerasTensor)

    # Eager call and compute_output_shape.
    eager_layer = layer_cls(**init_kwargs)
    outputs = _call(eager_layer, input_data, call_kwargs)
    output_shapes = [tuple(int(d) for d in ops.shape(t)) for t in tree.flatten(outputs)]
    if expected_output_shape is not None:
        assert output_shapes == _flat_shapes(expected_output_shape), (
            f"output shape {output_shapes} != {expected_output_shape}"
        )
    for symbolic, shape in zip(tree.flatten(symbolic_outputs), output_shapes):
        assert tuple(symbolic.shape[1:]) == shape[1:], (symbolic.shape, shape)
    if not isinstance(input_data, (list, tuple)):
        computed = _flat_shapes(eager_layer.compute_output_shape(shapes))
        assert [c[1:] for c in computed] == [o[1:] for o in output_shapes], (computed, output_shapes)
    for t in _float_outputs(outputs):
        assert np.all(np.isfinite(ops.convert_to_numpy(t))), "non-finite output"
    if expected_output is not None:
        _assert_all_close(outputs, expected_output, tolerance, tolerance, "expected_output")

    # The same computation compiled.
    model = _wrap_in_functional(eager_layer, input_data, call_kwargs)
    model.compile(jit_compile=True)
    compiled = model.predict(input_data if not isinstance(input_data, tuple) else list(input_data), verbose=0)
    _assert_all_close(compiled, outputs, jit_tolerance, jit_tolerance, "jit_compile=True")

    if run_training_check:
        _check_fit_step(layer_cls, init_kwargs, input_data, call_kwargs)
    if run_mixed_precision_check:
        for policy in MIXED_POLICIES:
            _check_mixed_precision(layer_cls, init_kwargs, input_data, call_kwargs, policy, mixed_precision_output_dtype,
                                   (eager_layer, outputs) if compare_mixed_precision_values else None)
    if run_saving_check:
        _check_keras_file_round_trip(eager_layer, input_data, call_kwargs, outputs, tolerance)
    return outputs


def _wrap_in_functional(layer, input_data, call_kwargs):
    inputs = _input_spec(input_data)
    outputs = _call(layer, inputs, call_kwargs)
    return keras.Model(inputs, outputs)


def _check_fit_step(layer_cls, init_kwargs, input_data, call_kwargs):
    layer = layer_cls(**init_kwargs)
    model = SquaredOutputsModel(layer, call_kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=True)
    model(input_data if not isinstance(input_data, tuple) else list(input_data))
    before = [ops.convert_to_numpy(w) for w in model.trainable_weights]
    history = model.fit(
        input_data if not isinstance(input_data, tuple) else list(input_data),
        batch_size=_batch_size(input_data),
        epochs=1,
        shuffle=False,
        verbose=0,
    )
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)), f"non-finite training loss {losses}"
    after = [ops.convert_to_numpy(w) for w in model.trainable_weights]
    for b, a in zip(before, after):
        assert np.all(np.isfinite(a)), "non-finite weight after one step"
    if before:
        assert any(not np.array_equal(b, a) for b, a in zip(before, after)), "no weight moved in one step"


def _check_mixed_precision(layer_cls, init_kwargs, input_data, call_kwargs, policy, output_dtype, float32_reference):
    layer = layer_cls(**init_kwargs, dtype=policy)
    cast_inputs = tree.map_structure(
        lambda x: x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x, input_data
    )
    outputs = _call(layer, cast_inputs, call_kwargs)
    if float32_reference is not None:
        float32_layer, float32_outputs = float32_reference
        layer.set_weights(float32_layer.get_weights())
        outputs = _call(layer, cast_inputs, call_kwargs)
        tolerance = MIXED_PRECISION_TOLERANCE[policy]
        for low, high in zip(_float_outputs(outputs), _float_outputs(float32_outputs)):
            low, high = (np.asarray(ops.convert_to_numpy(ops.cast(t, "float32")), np.float64) for t in (low, high))
            scale = max(1.0, float(np.max(np.abs(high), initial=0.0)))
            np.testing.assert_allclose(low, high, rtol=tolerance, atol=tolerance * scale,
                                       err_msg=f"{policy} outputs vs float32 outputs")
    expected_dtype = output_dtype or layer.compute_dtype
    for t in _float_outputs(outputs):
        assert keras.backend.standardize_dtype(t.dtype) == expected_dtype, (policy, t.dtype)
        assert np.all(np.isfinite(ops.convert_to_numpy(ops.cast(t, "float32")))), f"non-finite under {policy}"
    for w in layer.weights:
        if "float" in w.dtype:
            assert w.dtype == "float32", f"weight {w.path} is {w.dtype} under {policy}"


def _check_keras_file_round_trip(layer, input_data, call_kwargs, expected, tolerance):
    model = _wrap_in_functional(layer, input_data, call_kwargs)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        restored = keras.saving.load_model(path, safe_mode=True)
    data = input_data if not isinstance(input_data, tuple) else list(input_data)
    _assert_all_close(restored.predict(data, verbose=0), expected, tolerance, tolerance, ".keras round trip")


def run_loss_test(
    loss_cls,
    init_kwargs,
    y_true,
    y_pred,
    expected_value=None,
    sample_weight=None,
    tolerance=1e-5,
    run_mixed_precision_check=True,
    run_saving_check=True,
):
    """Checks a loss class: config round trips, value (eager, compiled), float32 under
    mixed precision, finite gradients, and a compiled model that uses it saved and
    reloaded with ``safe_mode=True``.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    loss = loss_cls(**init_kwargs)
    config = loss.get_config()
    missing = [k for k in init_kwargs if k not in config]
    assert not missing, f"get_config() of {loss_cls.__name__} lacks {missing}"
    revived = loss_cls.from_config(config)
    assert revived.get_config() == config
    deserialized = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(deserialized) is loss_cls

    value = loss(y_true, y_pred, sample_weight=sample_weight)
    assert tuple(ops.shape(value)) == (), f"loss value has shape {ops.shape(value)}"
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    value = float(ops.convert_to_numpy(value))
    assert np.isfinite(value)
    if expected_value is not None:
        np.testing.assert_allclose(value, expected_value, rtol=tolerance, atol=tolerance)
    assert np.isclose(float(ops.convert_to_numpy(revived(y_true, y_pred, sample_weight=sample_weight))), value)

    # Compiled: a model whose output is y_pred (a trainable identity offset) trained with the loss.
    model = _loss_probe_model(y_pred)
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss=loss_cls(**init_kwargs), jit_compile=True)
    compiled_value = model.evaluate(y_pred, y_true, batch_size=len(y_pred), verbose=0)
    np.testing.assert_allclose(compiled_value, value, rtol=max(tolerance, 1e-4), atol=max(tolerance, 1e-4))
    history = model.fit(y_pred, y_true, batch_size=len(y_pred), epochs=1, shuffle=False, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert all(np.all(np.isfinite(ops.convert_to_numpy(w))) for w in model.weights), "non-finite gradient step"

    if run_mixed_precision_check and np.issubdtype(y_pred.dtype, np.floating):
        for policy in ("float16", "bfloat16"):
            low = loss_cls(**init_kwargs)
            out = low(y_true, ops.cast(y_pred, policy), sample_weight=sample_weight)
            assert keras.backend.standardize_dtype(out.dtype) == "float32", (policy, out.dtype)
            assert np.isfinite(float(ops.convert_to_numpy(out)))

    if run_saving_check:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "model.keras")
            model.save(path)
            restored = keras.saving.load_model(path, safe_mode=True)
        assert type(restored.loss) is loss_cls
        np.testing.assert_allclose(
            restored.evaluate(y_pred, y_true, batch_size=len(y_pred), verbose=0),
            model.evaluate(y_pred, y_true, batch_size=len(y_pred), verbose=0),
            rtol=1e-5,
            atol=1e-5,
        )
    return value


def _loss_probe_model(y_pred):
    """x -> x + b with b = 0: outputs y_pred exactly and has a weight for the gradient."""
    inputs = keras.Input(shape=y_pred.shape[1:], dtype="float32")
    probe = keras.layers.Dense(y_pred.shape[-1], kernel_initializer="identity", name="probe")
    return keras.Model(inputs, probe(inputs))
