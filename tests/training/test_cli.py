"""Tests for keras_cvx.training.cli: flag parsing, schedules/optimizers chosen from flags,
and ``build_trainer`` (mirrored over logical CPUs in a fresh process)."""

import json

import keras
import pytest
import tensorflow as tf

from keras_cvx.training.cli import build_trainer, make_learning_rate, make_optimizer, make_parser, make_strategy
from keras_cvx.training.schedules import WarmupCosineDecay, WarmupStepDecay
from keras_cvx.training.trainer import Trainer
from tests.training.test_trainer import ToyClassifier, run_python


def test_defaults_and_flags():
    args = make_parser().parse_args([])
    assert (args.strategy, args.jit_compile, args.mixed_precision, args.resume) == ("default", "auto", "none", True)
    assert make_parser().parse_args(["--jit-compile"]).jit_compile is True
    args = make_parser(batch_size=16).parse_args(
        ["--strategy", "mirrored", "--no-jit-compile", "--mixed-precision", "mixed_bfloat16", "--steps", "30",
         "--model-dir", "run", "--no-resume", "--learning-rate", "0.02", "--warmup-steps", "5",
         "--checkpoint-every", "7", "--eval-every", "9", "--logical-cpu-devices", "2", "--clipnorm", "1.5"]
    )
    assert args.batch_size == 16
    assert (args.strategy, args.jit_compile, args.mixed_precision, args.steps, args.model_dir) == (
        "mirrored", False, "mixed_bfloat16", 30, "run")
    assert (args.resume, args.learning_rate, args.warmup_steps, args.checkpoint_every, args.eval_every) == (
        False, 0.02, 5, 7, 9)
    assert (args.logical_cpu_devices, args.clipnorm) == (2, 1.5)


@pytest.mark.parametrize("argv", [["--strategy", "tpu"], ["--batch-size", "0"], ["--steps", "-3"],
                                  ["--learning-rate", "0"], ["--mixed-precision", "fp16"]])
def test_bad_flags_exit_with_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as raised:
        make_parser().parse_args(argv)
    assert raised.value.code == 2
    assert "error" in capsys.readouterr().err


def test_schedules_and_optimizers_from_flags():
    parse = make_parser().parse_args
    cosine = make_learning_rate(parse(["--steps", "100", "--warmup-steps", "10", "--learning-rate", "0.1"]))
    assert isinstance(cosine, WarmupCosineDecay)
    assert [float(cosine(s)) for s in (5, 10, 100)] == pytest.approx([0.05, 0.1, 0.0], abs=1e-7)
    step = make_learning_rate(parse(["--schedule", "step", "--steps", "90", "--learning-rate", "0.1"]))
    assert isinstance(step, WarmupStepDecay) and step.boundaries == [60, 80]
    assert [float(step(s)) for s in (59, 60, 80)] == pytest.approx([0.1, 0.01, 0.001], rel=1e-5)
    constant = make_learning_rate(parse(["--schedule", "constant"]))
    assert float(constant(10**6)) == pytest.approx(0.01)
    sgd = make_optimizer(parse([]))
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0.9
    adamw = make_optimizer(parse(["--optimizer", "adamw", "--weight-decay", "0.05"]))
    assert isinstance(adamw, keras.optimizers.AdamW) and adamw.weight_decay == 0.05
    with pytest.raises(ValueError, match="strategy"):
        make_strategy("tpu")


def test_build_trainer_default_strategy(tmp_path):
    args = make_parser().parse_args(["--model-dir", str(tmp_path), "--no-jit-compile", "--clipnorm", "2",
                                     "--mixed-precision", "mixed_float16", "--seed", "4"])
    strategy, trainer = build_trainer(args, ToyClassifier)
    assert isinstance(trainer, Trainer) and strategy is tf.distribute.get_strategy()
    assert (trainer.jit_compile, trainer.clipnorm, trainer.model_dir) == (False, 2.0, str(tmp_path))
    assert trainer.model.dtype_policy.name == "mixed_float16"
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)


def test_build_trainer_mirrored_on_logical_cpus():
    out = run_python(
        """
        import json
        from keras_cvx.training.cli import build_trainer, make_parser
        from tests.training.test_trainer import ToyClassifier
        args = make_parser().parse_args(["--strategy", "mirrored", "--logical-cpu-devices", "2",
                                         "--batch-size", "4"])
        strategy, trainer = build_trainer(args, ToyClassifier)
        print(json.dumps([strategy.num_replicas_in_sync, type(strategy).__name__]))
        args = make_parser().parse_args(["--strategy", "mirrored", "--batch-size", "3"])
        try:
            build_trainer(args, ToyClassifier)
        except ValueError as error:
            print(json.dumps(str(error)))
        """
    )
    lines = out.strip().splitlines()
    assert json.loads(lines[-2]) == [2, "MirroredStrategy"]
    assert "--batch-size" in json.loads(lines[-1]) and "divisible" in json.loads(lines[-1])
