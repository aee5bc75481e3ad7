"""The live progress bar: Lightning's rich bar, narrower, with the loss and images per second."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import (
    BatchesProcessedColumn,
    CustomBarColumn,
    CustomTimeColumn,
    RichProgressBarTheme,
)
from rich.console import Console
from rich.progress import TextColumn

from ...errors import InvalidValueError
from ..lightning_private import rich_console_kwargs
from .checkpoints import best_checkpoint_callback
from .formatting import format_rate
from .plain import PlainProgress
from .throughput import ThroughputMeter, count_images

# Three significant digits ("loss: 0.512", "val/top1: 0.94"): with the narrower bar and without
# Lightning's it/s column (img/s says more), the metrics take one or two lines of 80 columns,
# not six.
COMPACT_THEME = RichProgressBarTheme(metrics_format=".3g")
BAR_WIDTH = 12


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
        console = Console(**rich_console_kwargs(self))
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
