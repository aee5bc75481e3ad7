"""Images per second: the meter, and how many images a batch holds."""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import torch
from lightning.pytorch.utilities.data import extract_batch_size

from ...errors import InvalidValueError


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
