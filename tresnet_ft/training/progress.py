"""What a fit shows while it runs and when it ends.

- :class:`ThroughputProgressBar`: Lightning's rich bar with the training loss and images per
  second, narrow enough for an 80-column terminal. When stdout is not a terminal (a cluster log,
  ``| tee``, ``nohup``) a live bar would print nothing until the end, so it writes plain lines
  instead: one every ``log_every_n_steps`` batches and one per epoch.
- :class:`FitReport`: one summary line at the end of every fit (best metric, its epoch, the best
  checkpoint, the time taken) and, after Ctrl-C, the command that resumes the run.
"""
from __future__ import annotations

import logging
import math
import os
import shlex
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import (
    BatchesProcessedColumn,
    CustomBarColumn,
    CustomTimeColumn,
    RichProgressBarTheme,
)
from lightning.pytorch.utilities.data import extract_batch_size
from rich.console import Console
from rich.progress import TextColumn
from ..errors import InvalidValueError

log = logging.getLogger(__name__)

# Three significant digits ("loss: 0.512", "val/top1: 0.94"): with the narrower bar and without
# Lightning's it/s column (img/s says more), the metrics take one or two lines of 80 columns,
# not six.
COMPACT_THEME = RichProgressBarTheme(metrics_format=".3g")
BAR_WIDTH = 12


class ThroughputMeter:
    """Images per second over the last ``window`` batches.

    Each batch's time runs from the end of the previous batch (so data loading counts) to its
    own end. :meth:`pause` marks a break (validation, a new epoch); the next batch then counts
    from its own start, so the break is not counted as training time.

    Args:
        window: the number of recent batches the rate is averaged over.
        clock: seconds, monotonic (``time.perf_counter``; injectable for tests).
    """

    def __init__(self, window: int = 20, clock: Callable[[], float] = time.perf_counter) -> None:
        if window < 1:
            raise InvalidValueError(f"Expected window to be a positive integer, but got {window}.")
        self._clock = clock
        self._batches: deque[tuple[int, float]] = deque(maxlen=window)
        self._last: float | None = None

    def pause(self) -> None:
        self._last = None

    def batch_started(self) -> None:
        if self._last is None:
            self._last = self._clock()

    def batch_ended(self, num_images: int) -> None:
        now = self._clock()
        if self._last is not None:
            self._batches.append((num_images, now - self._last))
        self._last = now

    @property
    def rate(self) -> float | None:
        """Images per second, or ``None`` before the first timed batch."""
        seconds = sum(duration for _, duration in self._batches)
        if seconds <= 0:
            return None
        return sum(images for images, _ in self._batches) / seconds


class ThroughputProgressBar(RichProgressBar):
    """Lightning's rich progress bar with the training loss and throughput (``img/s``).

    The rate counts the images of every process (per-process batch size × world size), averaged
    over the last ``window`` training batches, data loading included; validation time is left
    out.

    Training metrics (``train_metrics``, logged by the module without ``prog_bar``) are read
    every ``metrics_every_n_steps`` batches (default: the Trainer's ``log_every_n_steps``), not
    at every batch: each read copies a device value to the host, a sync that stalls a GPU, and
    Lightning reads every ``prog_bar`` metric at every batch. The bar itself moves every batch.

    When the console is neither a terminal nor a notebook (stdout redirected to a file or a
    pipe), the live bar is replaced by plain lines (:class:`PlainProgress`) on global rank 0,
    written at those same reads, so they cost no extra sync, and at each epoch's end. The value
    of the best checkpoint's monitored metric is read once per validation for them.
    Other keyword arguments go to :class:`~lightning.pytorch.callbacks.RichProgressBar`.
    """

    def __init__(self, window: int = 20, metrics_every_n_steps: int | None = None,
                 train_metrics: Sequence[str] = ("train/loss",),
                 theme: RichProgressBarTheme = COMPACT_THEME, **kwargs: Any) -> None:
        super().__init__(theme=theme, **kwargs)
        if metrics_every_n_steps is not None and metrics_every_n_steps < 1:
            raise InvalidValueError(f"Expected metrics_every_n_steps to be a positive integer or None, but got "
                             f"{metrics_every_n_steps}.")
        self.throughput = ThroughputMeter(window)
        self.metrics_every_n_steps = metrics_every_n_steps
        self.train_metrics = tuple(train_metrics)
        self.plain: PlainProgress | None = None  # set in setup when the output is not live
        self._train_values: dict[str, float] = {}  # as last read, shown until the next read
        self._monitored: dict[str, float] = {}  # the monitored metric at the last validation

    @property
    def is_enabled(self) -> bool:
        """Whether the rich display runs (not where plain lines replace it)."""
        return super().is_enabled and self.plain is None

    @property
    def writes_lines(self) -> bool:
        """Whether this process writes plain progress lines."""
        return self.plain is not None and super().is_enabled

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # disables the bar on ranks other than 0
        console = Console(**self._console_kwargs)
        if self.plain is None and not (console.is_terminal or console.is_jupyter):
            self.plain = PlainProgress(console)

    def configure_columns(self, trainer: pl.Trainer) -> list:
        return [
            TextColumn("[progress.description]{task.description}"),
            CustomBarColumn(bar_width=BAR_WIDTH, complete_style=self.theme.progress_bar,
                            finished_style=self.theme.progress_bar_finished,
                            pulse_style=self.theme.progress_bar_pulse),
            BatchesProcessedColumn(style=self.theme.batch_progress),
            CustomTimeColumn(style=self.theme.time),
        ]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.writes_lines:
            self.plain.start(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.throughput.pause()
        super().on_train_epoch_start(trainer, pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.throughput.pause()
        self._read_train_metrics(trainer)
        super().on_validation_start(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.writes_lines and not trainer.sanity_checking:
            self._read_monitored_metric(trainer)
        super().on_validation_end(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.throughput.batch_started()
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:
        # Before super(): it refreshes the bar from get_metrics().
        self.throughput.batch_ended(count_images(batch) * trainer.world_size)
        every = self.metrics_every_n_steps or max(1, trainer.log_every_n_steps)
        if (batch_idx + 1) % every == 0:
            self._read_train_metrics(trainer)
            if batch_idx + 1 != trainer.num_training_batches:  # the epoch's own line follows
                self._write_line(trainer)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._read_train_metrics(trainer)
        self._write_line(trainer, epoch_done=True)  # after this epoch's validation, if any
        super().on_train_epoch_end(trainer, pl_module)

    def _read_train_metrics(self, trainer: pl.Trainer) -> None:
        metrics = trainer.callback_metrics  # device tensors: no sync until read below
        for key in self.train_metrics:
            value = metrics.get(f"{key}_step", metrics.get(key))
            if value is not None:
                self._train_values[key.rsplit("/", 1)[-1]] = float(value)

    def _read_monitored_metric(self, trainer: pl.Trainer) -> None:
        best = best_checkpoint_callback(trainer)
        value = None if best is None else trainer.callback_metrics.get(best.monitor)
        if value is not None:
            self._monitored = {best.monitor: float(value)}

    def _write_line(self, trainer: pl.Trainer, epoch_done: bool = False) -> None:
        if self.writes_lines:
            values = {**self._train_values, **self._monitored}
            self.plain.write(trainer, values, self.throughput.rate, epoch_done)

    def get_metrics(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        items = {**self._train_values, **super().get_metrics(trainer, pl_module)}
        items.pop("v_num", None)  # the run folder is reported at the end; here it costs a line
        rate = self.throughput.rate
        if rate is not None:
            items["img/s"] = format_rate(rate)  # a string: not formatted as a metric
        return items


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


class FitReport(Callback):
    """One line at the end of every fit, and after Ctrl-C the command that resumes the run.

    The summary names the best checkpoint's monitored metric, its value, the epoch it was
    reached in (read from the checkpoint), the checkpoint's path and the fit's duration. It is
    logged at ``teardown``, after the other callbacks' end-of-fit messages.

    On Ctrl-C Lightning stops gracefully (it calls ``on_exception`` with the KeyboardInterrupt,
    then exits with status 1) but saves no checkpoint, so a run resumes from its last saved
    ``last.ckpt``: the hint gives the command line of this process (:func:`resume_command`) with
    ``--ckpt_path last``, or says that no checkpoint was saved yet. Both messages go to this
    module's logger on global rank 0 only.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._started: float | None = None
        self._fit_ended = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started, self._fit_ended = self._clock(), False

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_ended = True

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self._fit_ended and trainer.is_global_zero:
            self._fit_ended = False
            log.info(fit_summary(trainer, self._clock() - self._started))

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt) and trainer.is_global_zero:
            log.info(resume_hint(trainer))


def best_checkpoint_callback(trainer: pl.Trainer) -> ModelCheckpoint | None:
    """The first checkpoint callback that keeps the best value of a monitored metric."""
    return next((cb for cb in trainer.checkpoint_callbacks
                 if isinstance(cb, ModelCheckpoint) and cb.monitor), None)


def fit_summary(trainer: pl.Trainer, seconds: float) -> str:
    """``Fit finished in 0:04:41: best val/top1 0.9612 at epoch 1, checkpoint runs/.../best.ckpt``."""
    text = f"Fit finished in {format_duration(seconds)}"
    best = best_checkpoint_callback(trainer)
    if best is None:
        return text + "; no checkpoint keeps a best metric."
    if best.best_model_score is None or not best.best_model_path:
        return text + f"; no best checkpoint ({best.monitor} was never logged)."
    epoch = saved_epoch(best.best_model_path)
    at = "" if epoch is None else f" at epoch {epoch}"
    return (f"{text}: best {best.monitor} {float(best.best_model_score):.4f}{at}, "
            f"checkpoint {best.best_model_path}")


def saved_epoch(path: str | os.PathLike) -> int | None:
    """The ``epoch`` a Lightning checkpoint was saved in, or None if the file cannot tell.

    Memory-mapped: only the small pickle is read, not the weights.
    """
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:  # noqa: BLE001 (unreadable, remote or not Lightning's: the summary goes without)
        log.debug("Could not read the epoch of %s.", path, exc_info=True)
        return None


def resume_hint(trainer: pl.Trainer, argv: Sequence[str] | None = None,
                orig_argv: Sequence[str] | None = None) -> str:
    """What to run after an interrupted fit: resume from ``last.ckpt``, or start again."""
    where = f"Interrupted at epoch {trainer.current_epoch}, step {trainer.global_step}."
    last = last_checkpoint(trainer)
    if last is None:
        command = _shell_command(argv, orig_argv, drop=(), extra=())
        return f"{where} No checkpoint was saved yet; to start again, run:\n  {command}"
    command = resume_command(argv, orig_argv)
    return f"{where} To resume from the last checkpoint ({last}), run:\n  {command}"


def last_checkpoint(trainer: pl.Trainer) -> Path | None:
    """The ``last.ckpt`` in a checkpoint callback's folder, if one was saved."""
    name = ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION
    for callback in trainer.checkpoint_callbacks:
        folder = getattr(callback, "dirpath", None)
        if folder and (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def resume_command(argv: Sequence[str] | None = None,
                   orig_argv: Sequence[str] | None = None) -> str:
    """This process's command line with ``--ckpt_path last`` in place of any ``--ckpt_path``.

    ``argv`` defaults to ``sys.argv`` and ``orig_argv`` to ``sys.orig_argv``; the latter gives the
    interpreter part of ``python -m package.module`` or ``python script.py``.

    Example:
        >>> resume_command(["/venv/bin/tresnet-ft", "fit", "--recipe", "flowers102"], [])
        '/venv/bin/tresnet-ft fit --recipe flowers102 --ckpt_path last'
    """
    return _shell_command(argv, orig_argv, drop=("--ckpt_path",), extra=("--ckpt_path", "last"))


def _shell_command(argv: Sequence[str] | None, orig_argv: Sequence[str] | None,
                   drop: Sequence[str], extra: Sequence[str]) -> str:
    argv = list(sys.argv if argv is None else argv)
    orig_argv = list(getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv)
    return shlex.join([*_program(argv, orig_argv), *_without_options(argv[1:], drop), *extra])


def _program(argv: list[str], orig_argv: list[str]) -> list[str]:
    """How the user started this program: ``python -m mod``, ``python x.py`` or ``tresnet-ft``."""
    if argv[0].endswith(".py") and len(orig_argv) >= len(argv):
        return orig_argv[:len(orig_argv) - len(argv) + 1]
    found = shutil.which(os.path.basename(argv[0]))
    if found and os.path.exists(argv[0]) and os.path.samefile(found, argv[0]):
        return [os.path.basename(argv[0])]  # on PATH: the short name runs the same program
    return [argv[0]]


def _without_options(args: list[str], names: Sequence[str]) -> list[str]:
    """``args`` without ``--name value`` and ``--name=value`` for each of ``names``."""
    kept, skip_next = [], False
    for arg in args:
        if skip_next:
            skip_next = False
        elif arg in names:
            skip_next = True
        elif not arg.startswith(tuple(f"{name}=" for name in names)):
            kept.append(arg)
    return kept


def format_rate(rate: float) -> str:
    """Images per second as shown: whole numbers from 10 on, two decimals below."""
    return f"{rate:.0f}" if rate >= 10 else f"{rate:.2f}"


def format_duration(seconds: float) -> str:
    """``H:MM:SS``, whole seconds."""
    return str(timedelta(seconds=int(seconds)))

def count_images(batch: Any) -> int:
    """The number of images in a batch: the length of its first 4-D tensor, else Lightning's guess.

    Looking for the image tensor first keeps a scalar in the batch (a mixing weight, say) from
    being taken for a batch of one.
    """
    found = _first_image_tensor(batch)
    return len(found) if found is not None else extract_batch_size(batch)


def _first_image_tensor(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, torch.Tensor):
        return batch if batch.ndim == 4 else None
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for value in batch:
            found = _first_image_tensor(value)
            if found is not None:
                return found
    return None



__all__ = ["COMPACT_THEME", "FitReport", "PlainProgress", "ThroughputMeter", "ThroughputProgressBar",
           "best_checkpoint_callback", "count_images", "fit_summary", "format_duration", "format_rate",
           "last_checkpoint", "resume_command", "resume_hint", "saved_epoch"]
