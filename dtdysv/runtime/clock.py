"""The run's clock: "epoch N/M" and the time left of a training run, estimated from its finished epochs."""

from __future__ import annotations

import time
from collections.abc import Callable


def duration(seconds: float) -> str:
    """'45 s', '12 min', '3 h 05 min'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class RunClock:
    """Times the epochs of one run (training and evaluation, as the loop runs them) from ``first_epoch`` to
    ``max_epoch``; the time left is the mean epoch so far times the epochs left. A resumed run starts a new clock."""

    def __init__(self, first_epoch: int, max_epoch: int, now: Callable[[], float] = time.monotonic) -> None:
        self.first_epoch, self.max_epoch, self.now = first_epoch, max_epoch, now
        self.start = now()
        self.done = 0

    def epoch_done(self) -> None:
        self.done += 1

    def seconds_left(self, epoch: int) -> float | None:
        """Estimated seconds until the run ends, once ``epoch`` has started; None before a first epoch finished."""
        if not self.done:
            return None
        return (self.now() - self.start) / self.done * (self.max_epoch - epoch + 1)

    def label(self, epoch: int) -> str:
        """'epoch 3/24' and, from the second epoch on, the run's time left: 'epoch 3/24, run ~12 min left'."""
        left = self.seconds_left(epoch)
        return f"epoch {epoch}/{self.max_epoch}" + ("" if left is None else f", run ~{duration(left)} left")

    def summary(self, epoch: int) -> str:
        """After ``epoch`` finished: the elapsed time and the time left of the run."""
        elapsed = self.now() - self.start
        if epoch >= self.max_epoch:
            return f"run finished: {self.done} epochs in {duration(elapsed)}"
        left = self.seconds_left(epoch + 1) or 0.0
        finish = time.strftime("%H:%M", time.localtime(time.time() + left))
        return f"{duration(elapsed)} so far, ~{duration(left)} left (ends ~{finish})"
