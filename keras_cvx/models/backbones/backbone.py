"""``Backbone``: the base class of the package's backbones, a Functional ``keras.Model`` that
is saved as the arguments it was built with (as keras-hub's ``Backbone``).

A detector stores its backbone's config, e.g. ``{"class_name": "ResNet", "config": {"depth":
50, ...}}``, and rebuilds it by calling the class again, instead of storing the whole layer
graph or re-dispatching on a name string.
"""

import keras


@keras.saving.register_keras_serializable(package="keras_cvx")
class Backbone(keras.Model):
    """A Functional model from images to a classifier's output or to a dict of named feature
    maps (``{"C2": ..., "C5": ...}``), rebuilt from its constructor arguments.

    Subclasses build their graph in ``__init__``, then call
    ``super().__init__(inputs, outputs, arguments, name=...)`` with ``arguments``, the dict of
    their constructor arguments that ``get_config`` returns and ``from_config`` passes back.
    Every layer of the graph must be named explicitly, so that a rebuilt model has the same
    layer names (the weights of a ``.keras`` file are looked up by them).

    Args:
        inputs: the ``keras.Input`` of the graph.
        outputs: a tensor or a dict of tensors.
        arguments: the subclass's constructor arguments (JSON-serializable values).
        name: model name.
        **kwargs: passed to ``keras.Model`` (e.g. ``trainable``, ``dtype``).

    Example:

    >>> from keras_cvx.models.backbones import ResNet
    >>> backbone = ResNet(depth=10, include_top=False, input_shape=(32, 32, 3), base_width=8)
    >>> sorted(backbone.output)
    ['C2', 'C3', 'C4', 'C5']
    >>> backbone.get_config()["depth"]
    10
    >>> clone = ResNet.from_config(backbone.get_config())
    >>> [layer.name for layer in clone.layers] == [layer.name for layer in backbone.layers]
    True
    """

    def __init__(self, inputs, outputs, arguments, name=None, **kwargs):
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        self._arguments = dict(arguments)

    @property
    def feature_names(self):
        """The names of the feature maps (``["C2", ..., "C5"]``), ``[]`` for a classifier."""
        return list(self.output) if isinstance(self.output, dict) else []

    def get_config(self):
        return {**self._arguments, "name": self.name, "trainable": self.trainable}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
