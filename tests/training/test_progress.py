"""Tests for keras_cvx.training.progress: throughput arithmetic and the bar's output."""

import time

import pytest

from keras_cvx.training.progress import TrainingProgress


def test_images_per_second_over_interval(monkeypatch):
    clock = iter([100.0, 102.0, 102.5])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    progress = TrainingProgress(total_steps=10, global_batch_size=16, verbose=0)
    assert progress.images_per_second(0) == 0.0
    assert progress.images_per_second(4) == pytest.approx(4 * 16 / 2.0)
    assert progress.images_per_second(5) == pytest.approx(16 / 0.5)


def test_bar_shows_values_as_given(capsys):
    progress = TrainingProgress(total_steps=4, global_batch_size=8, verbose=2)
    progress.update(2, {"loss": 3.0, "images_per_second": 10.0})
    progress.update(4, {"loss": 1.0, "images_per_second": 30.0})
    out = capsys.readouterr().out
    # values are shown as given, not averaged over updates (averaging would give loss 2.0)
    assert "loss: 1.0000" in out and "images_per_second: 30.0000" in out
    assert "loss: 2.0000" not in out
