"""Tests for keras_cvx.training.summaries: scalars read back from the event file."""

import numpy as np
import pytest
import tensorflow as tf

from keras_cvx.training.summaries import ScalarWriter


def _read(directory):
    values = {}
    for path in tf.io.gfile.glob(str(directory / "train" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                values[(value.tag, event.step)] = (
                    float(tf.make_ndarray(value.tensor)), value.metadata.plugin_data.plugin_name
                )
    return values


def test_scalars_written_with_scalar_plugin_metadata(tmp_path):
    writer = ScalarWriter(str(tmp_path))
    writer.write(3, {"loss": 0.25, "images_per_second": np.float32(12.5)})
    writer.write(5, {"AP": 0.5}, prefix="eval/")
    values = _read(tmp_path)
    assert values[("loss", 3)] == (pytest.approx(0.25), "scalars")
    assert values[("images_per_second", 3)][0] == pytest.approx(12.5)
    assert values[("eval/AP", 5)][0] == pytest.approx(0.5)


def test_disabled_writer_writes_nothing(tmp_path):
    ScalarWriter(str(tmp_path), enabled=False).write(1, {"loss": 1.0})
    ScalarWriter(None).write(1, {"loss": 1.0})
    assert not (tmp_path / "train").exists()
