"""TensorBoard scalars for the training loop: written by the chief only, into
``<model_dir>/train``; other workers get a no-op writer.

Scalars are written with ``tf.summary.write`` and the scalar plugin's metadata (what
``tf.summary.scalar`` does), so the ``tensorboard`` package is not needed to write them.
"""

import os

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR,
).SerializeToString()


class ScalarWriter:
    """Writes dicts of numbers as TensorBoard scalars at a step.

    Args:
        model_dir: run directory, or ``None`` for no summaries.
        enabled: ``False`` on non-chief workers.
    """

    def __init__(self, model_dir, enabled=True):
        if model_dir is None or not enabled:
            self._writer = tf.summary.create_noop_writer()
        else:
            self._writer = tf.summary.create_file_writer(os.path.join(model_dir, "train"))

    def write(self, step, scalars, prefix=""):
        with self._writer.as_default(step=int(step)):
            for name, value in scalars.items():
                tf.summary.write(prefix + name, tf.constant(float(value), tf.float32), metadata=_SCALAR_METADATA)
        self._writer.flush()
