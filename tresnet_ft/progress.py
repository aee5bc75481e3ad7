"""The training progress bar: loss and images/s, reading device values as rarely as it can."""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.utilities.data import extract_batch_size

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
            raise ValueError(f"Expected window to be a positive integer, but got {window}.")
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
    Other keyword arguments go to :class:`~lightning.pytorch.callbacks.RichProgressBar`.
    """

    def __init__(self, window: int = 20, metrics_every_n_steps: int | None = None,
                 train_metrics: Sequence[str] = ("train/loss",), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if metrics_every_n_steps is not None and metrics_every_n_steps < 1:
            raise ValueError(f"Expected metrics_every_n_steps to be a positive integer or None, but got "
                             f"{metrics_every_n_steps}.")
        self.throughput = ThroughputMeter(window)
        self.metrics_every_n_steps = metrics_every_n_steps
        self.train_metrics = tuple(train_metrics)
        self._train_values: dict[str, float] = {}  # as last read, shown until the next read

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.throughput.pause()
        super().on_train_epoch_start(trainer, pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.throughput.pause()
        self._read_train_metrics(trainer)
        super().on_validation_start(trainer, pl_module)

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
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._read_train_metrics(trainer)
        super().on_train_epoch_end(trainer, pl_module)

    def _read_train_metrics(self, trainer: pl.Trainer) -> None:
        metrics = trainer.callback_metrics  # device tensors: no sync until read below
        for key in self.train_metrics:
            value = metrics.get(f"{key}_step", metrics.get(key))
            if value is not None:
                self._train_values[key.rsplit("/", 1)[-1]] = float(value)

    def get_metrics(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        items = {**self._train_values, **super().get_metrics(trainer, pl_module)}
        rate = self.throughput.rate
        if rate is not None:
            # A string, so the bar does not print it with the metrics' three decimals.
            items["img/s"] = f"{rate:.0f}" if rate >= 10 else f"{rate:.2f}"
        return items


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



__all__ = ["ThroughputMeter", "ThroughputProgressBar", "count_images"]
