"""Layers: one block per file."""

from keras_cvx.layers.dynamic_relu import DynamicReLU
from keras_cvx.layers.rezero import ReZero, ReZeroTransformerEncoder
