"""Progress as plain lines, for when stdout is not a terminal (a cluster log, ``| tee``, ``nohup``)."""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

import lightning.pytorch as pl
from rich.console import Console

from .formatting import format_duration, format_rate


class PlainProgress:
    """Progress as one plain line per call, for logs: no cursor movement, no colour, flushed.

    A line reads ``epoch 0/1  step 40/350  loss 0.5123  val/top1 0.94  312 img/s  ETA 0:01:23``
    (epochs counted from 0, as in Lightning's bar; ``epoch 0/1 done`` at an epoch's end). The
    ETA is the remaining steps at the mean wall time per step since :meth:`start`, validation
    included.

    Args:
        console: where the lines go (the rich console the bar would have drawn on).
        clock: seconds, monotonic (injectable for tests).
    """

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self._clock = clock
        self._start: tuple[float, int] | None = None  # (time, global step) at train start
        self._total_steps: int | None = None

    def start(self, trainer: pl.Trainer) -> None:
        total = trainer.estimated_stepping_batches
        self._total_steps = int(total) if math.isfinite(total) else None
        self._start = (self._clock(), trainer.global_step)

    def write(self, trainer: pl.Trainer, values: Mapping[str, float], rate: float | None,
              epoch_done: bool = False) -> None:
        self.console.out(self.line(trainer, values, rate, epoch_done), highlight=False)

    def line(self, trainer: pl.Trainer, values: Mapping[str, float], rate: float | None,
             epoch_done: bool = False) -> str:
        epoch = f"epoch {trainer.current_epoch}"
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            epoch += f"/{trainer.max_epochs - 1}"
        step = f"step {trainer.global_step}"
        if self._total_steps is not None:
            step += f"/{self._total_steps}"
        parts = [epoch + (" done" if epoch_done else ""), step]
        parts += [f"{name} {value:.4g}" for name, value in values.items()]
        if rate is not None:
            parts.append(f"{format_rate(rate)} img/s")
        eta = self.eta(trainer.global_step)
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        return "  ".join(parts)

    def eta(self, step: int) -> float | None:
        """Seconds left at the mean time per step so far; None before a step or without a total."""
        if self._start is None or self._total_steps is None:
            return None
        started, first_step = self._start
        done = step - first_step
        if done <= 0:
            return None
        return (self._clock() - started) / done * max(0, self._total_steps - step)
