"""Progress bar for the training loop: ``keras.utils.Progbar`` showing the loss, the
throughput in images (examples) per second over the last logging interval and any extra
numbers (learning rate, skipped steps, evaluation results)."""

import time

import keras


class TrainingProgress:
    """Tracks throughput and drives a ``keras.utils.Progbar``.

    Args:
        total_steps: the step the run ends at (the bar's target).
        global_batch_size: examples consumed by one step over all replicas.
        verbose: 0 silent, 1 bar, 2 one line per update (as ``Progbar``).
    """

    def __init__(self, total_steps, global_batch_size, verbose=1):
        self.global_batch_size = global_batch_size
        # stateless_metrics=() makes every value "stateful": shown as given, not averaged.
        self._bar = keras.utils.Progbar(total_steps, verbose=verbose, stateless_metrics=())
        self._last_step = None
        self._last_time = None

    def images_per_second(self, step):
        """Examples/s since the previous call (0.0 on the first call)."""
        now = time.perf_counter()
        rate = 0.0
        if self._last_step is not None and now > self._last_time:
            rate = (step - self._last_step) * self.global_batch_size / (now - self._last_time)
        self._last_step, self._last_time = step, now
        return rate

    def update(self, step, values):
        """Moves the bar to ``step`` showing ``values`` (a dict of numbers)."""
        self._bar.update(step, values=list(values.items()))
