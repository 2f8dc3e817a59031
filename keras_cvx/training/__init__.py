"""The ``tf.distribute`` training loop, its schedules, checkpoints and command line."""

from keras_cvx.training.checkpoints import TrainingCheckpoint, is_chief
from keras_cvx.training.cli import build_trainer, make_parser, make_strategy
from keras_cvx.training.schedules import WarmupCosineDecay, WarmupStepDecay
from keras_cvx.training.trainer import NonFiniteLossError, Trainer
