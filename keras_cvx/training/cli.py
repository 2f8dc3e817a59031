"""Command line shared by every training example: ``make_parser`` returns an
``argparse.ArgumentParser`` with the training flags (examples add their own), and
``build_trainer(args, build_model)`` turns the parsed flags into a strategy and a
``Trainer``.

Flags: ``--strategy {default,mirrored,multiworker}`` (``multiworker`` reads ``TF_CONFIG``),
``--jit-compile/--no-jit-compile``, ``--mixed-precision {none,mixed_float16,mixed_bfloat16}``,
``--batch-size`` (global, over all replicas), ``--steps``, ``--model-dir``,
``--resume/--no-resume``, ``--learning-rate`` (for the global batch), ``--warmup-steps``,
``--schedule {cosine,step,constant}``, ``--optimizer {sgd,adamw}``, ``--weight-decay``,
``--clipnorm``, ``--checkpoint-every``, ``--eval-every``, ``--log-every``, ``--seed``,
``--deterministic``, ``--logical-cpu-devices N`` (split the CPU into N devices to try
``MirroredStrategy`` on one machine) and ``--verbose``.

Rerunning the same command resumes from the newest checkpoint in ``--model-dir``.
"""

import argparse

import keras
import tensorflow as tf

from keras_cvx.training.schedules import WarmupCosineDecay, WarmupStepDecay
from keras_cvx.training.trainer import Trainer

STRATEGIES = ("default", "mirrored", "multiworker")
PRECISIONS = ("none", "mixed_float16", "mixed_bfloat16")
SCHEDULES = ("cosine", "step", "constant")
OPTIMIZERS = ("sgd", "adamw")


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def make_parser(description=None, **defaults):
    """Returns the shared parser; keyword arguments override flag defaults by ``dest``
    (e.g. ``make_parser(batch_size=16, learning_rate=0.02)``)."""
    parser = argparse.ArgumentParser(description=description)
    group = parser.add_argument_group("training")
    group.add_argument("--strategy", choices=STRATEGIES, default="default")
    group.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default="auto",
                       help="compile the per-replica forward+backward with XLA (default: on a GPU/TPU, and on a "
                       "CPU where the model is faster with it; keras_cvx.training.Trainer)")
    group.add_argument("--mixed-precision", choices=PRECISIONS, default="none")
    group.add_argument("--batch-size", type=_positive_int, default=8, help="global batch size")
    group.add_argument("--steps", type=_positive_int, default=1000, help="training steps in total")
    group.add_argument("--model-dir", default=None, help="checkpoints and TensorBoard scalars")
    group.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                       help="restore the newest checkpoint of --model-dir")
    group.add_argument("--learning-rate", type=_positive_float, default=0.01)
    group.add_argument("--warmup-steps", type=_non_negative_int, default=0)
    group.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                       help="after warm-up: cosine to 0, x0.1 at 2/3 and 8/9 of --steps, or constant")
    group.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="SGD momentum 0.9 or AdamW")
    group.add_argument("--weight-decay", type=float, default=0.0)
    group.add_argument("--clipnorm", type=_positive_float, default=None, help="global gradient norm")
    group.add_argument("--checkpoint-every", type=_positive_int, default=100)
    group.add_argument("--eval-every", type=_positive_int, default=None)
    group.add_argument("--log-every", type=_positive_int, default=10)
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=False,
                       help="tf.config.experimental.enable_op_determinism()")
    group.add_argument("--logical-cpu-devices", type=_positive_int, default=None,
                       help="split the CPU into N logical devices (before TensorFlow starts)")
    group.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1)
    parser.set_defaults(**defaults)
    return parser


def configure(args):
    """Applies the process-wide flags: logical CPU devices (must run before TensorFlow
    initialises its devices), seeds, op determinism and the dtype policy."""
    if args.logical_cpu_devices:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.logical_cpu_devices
        )
    keras.utils.set_random_seed(args.seed)
    if args.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.config.set_dtype_policy("float32" if args.mixed_precision == "none" else args.mixed_precision)


def make_strategy(name):
    """``default``: the current strategy; ``mirrored``: every GPU, or every logical CPU
    when there is no GPU; ``multiworker``: ``MultiWorkerMirroredStrategy`` (``TF_CONFIG``)."""
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "default":
        return tf.distribute.get_strategy()
    raise ValueError(f"`strategy` must be one of {list(STRATEGIES)}, got {name!r}.")


def make_learning_rate(args):
    """The schedule chosen by ``--schedule``, ``--learning-rate``, ``--warmup-steps``, ``--steps``."""
    if args.schedule == "cosine" and args.steps > args.warmup_steps:
        return WarmupCosineDecay(args.learning_rate, args.steps, warmup_steps=args.warmup_steps)
    if args.schedule == "step":
        boundaries = sorted({b for b in (args.steps * 2 // 3, args.steps * 8 // 9) if b > 0})
        return WarmupStepDecay(args.learning_rate, boundaries, warmup_steps=args.warmup_steps)
    return WarmupStepDecay(args.learning_rate, [], warmup_steps=args.warmup_steps)


def make_optimizer(args):
    learning_rate = make_learning_rate(args)
    weight_decay = args.weight_decay or None
    if args.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=args.weight_decay)
    return keras.optimizers.SGD(learning_rate, momentum=0.9, weight_decay=weight_decay)


def build_trainer(args, build_model, eval_fn=None):
    """Configures the process and returns ``(strategy, trainer)``.

    Args:
        args: parsed flags of ``make_parser``.
        build_model: ``callable() -> keras.Model``, called inside the strategy's scope
            after the dtype policy is set.
        eval_fn: optional ``callable(model, step) -> dict``, run every ``--eval-every`` steps.

    Train with ``trainer.fit(dataset, args.steps)`` on a dataset batched with
    ``args.batch_size`` (``drop_remainder=True``).
    """
    configure(args)
    strategy = make_strategy(args.strategy)
    if args.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(
            f"`--batch-size` ({args.batch_size}) must be divisible by the "
            f"{strategy.num_replicas_in_sync} replicas."
        )
    with strategy.scope():
        model = build_model()
        optimizer = make_optimizer(args)
    trainer = Trainer(
        model, optimizer, strategy,
        model_dir=args.model_dir, jit_compile=args.jit_compile, clipnorm=args.clipnorm,
        checkpoint_every=args.checkpoint_every, resume=args.resume, eval_fn=eval_fn,
        eval_every=args.eval_every, log_every=args.log_every, verbose=args.verbose,
    )
    return strategy, trainer
