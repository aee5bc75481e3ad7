"""Stream preprocessed image batches from a list of paths, in path order, with bad files flagged.

Memory stays flat in the number of images: each worker decodes one batch at a time and the
DataLoader keeps only ``prefetch_factor`` batches per worker in flight. Batches travel as
``uint8 [B, 3, S, S]`` (4x fewer bytes than float32) and are written straight into shared memory in
the worker, as the DataLoader's own collation does: without that, every batch is copied into shared
memory when it is sent and the freed copies fragment the worker's heap, which then grows with the
number of batches (measured: +340 MB over 2000 images at 128 px). For the same reason the main
process scales every batch into one reused float buffer (:class:`FloatInput`) rather than a fresh
tensor per batch: fresh multi-MB tensors fragmented its heap in some runs (+330 MB, growing linearly).

Order: worker ``w`` of ``W`` builds batches ``w, w + W, w + 2W, ...`` itself (the DataLoader runs
with ``batch_size=None``) and the DataLoader takes batches from its workers round-robin, so the
stream comes out in path order. A file that cannot be decoded is left out of its batch and named
in the batch's ``unreadable`` list, which travels back with the images: no worker-side log files.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from ..data.images import ImageLimits, UnreadableImageError, read_image
from ..data.preprocessing import EvalPreprocessing
from ..data.workers import single_threaded_opencv
from ..errors import InvalidValueError

Batch = dict[str, Any]  # images: uint8 [B, 3, S, S]; paths: [B] str; unreadable: [(path, reason)]


class ImageBatchStream(IterableDataset):
    """Yields :data:`Batch` dicts of up to ``batch_size`` images from ``paths``, in order.

    Args:
        paths: image files, in output order.
        transform: RGB ``uint8 [H, W, 3]`` → ``uint8 [3, S, S]`` (``info.eval_transform(output="uint8")``).
        image_size: ``S`` of the batch tensor.
        batch_size: paths per batch (readable or not).
        min_decode_size: let JPEGs decode at 1/2..1/8 scale while both sides stay at least this
            (``preprocessing.decode_size``: the DataModule's validation loader uses the same, so
            predictions match validation).
        limits: the most bytes and pixels one image may take (a file above them is unreadable);
            None: :meth:`ImageLimits.resolve`, i.e. ``$TRESNET_FT_MAX_IMAGE_PIXELS`` and
            ``$TRESNET_FT_MAX_IMAGE_BYTES`` or the defaults, read here, in the main process.
    """

    def __init__(self, paths: Sequence[str], transform: Callable[[np.ndarray], torch.Tensor],
                 image_size: int, batch_size: int, min_decode_size: int | None = None,
                 limits: ImageLimits | None = None) -> None:
        super().__init__()
        self.paths, self.transform = paths, transform
        self.image_size, self.batch_size, self.min_decode_size = image_size, batch_size, min_decode_size
        self.limits = limits or ImageLimits.resolve()

    def num_batches(self) -> int:
        return -(-len(self.paths) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        worker = get_worker_info()
        shard, num_shards = (0, 1) if worker is None else (worker.id, worker.num_workers)
        for batch_index in range(shard, self.num_batches(), num_shards):
            start = batch_index * self.batch_size
            yield self.load_batch(self.paths[start:start + self.batch_size])

    def load_batch(self, paths: Sequence[str]) -> Batch:
        images, kept, unreadable = [], [], []
        for path in paths:
            try:
                images.append(self.transform(read_image(path, self.min_decode_size, self.limits)))
                kept.append(path)
            except UnreadableImageError as error:
                unreadable.append((error.source, error.reason))
            except cv2.error as error:  # decodable but degenerate for the resize (e.g. 0-pixel side)
                unreadable.append((path, f"the eval transform failed ({str(error).strip()[:80]})"))
        return {"images": self._stack(images), "paths": kept, "unreadable": unreadable}

    def _stack(self, images: list[torch.Tensor]) -> torch.Tensor:
        if not images:
            return torch.empty(0, 3, self.image_size, self.image_size, dtype=torch.uint8)
        # default_collate stacks straight into shared memory when it runs in a worker (module doc).
        return default_collate(images)


class FloatInput:
    """Turns ``uint8 [n, 3, S, S]`` batches into the model's ``float32`` input
    (:meth:`EvalPreprocessing.to_float`), written into one buffer ``[batch_size, 3, S, S]``
    (channels_last, the fused model's layout) that is reused for every batch. The returned view is
    valid until the next call."""

    def __init__(self, batch_size: int, preprocessing: EvalPreprocessing, device: torch.device) -> None:
        size = preprocessing.image_size
        self.buffer = torch.empty(batch_size, 3, size, size, device=device, memory_format=torch.channels_last)
        self.preprocessing = preprocessing

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.preprocessing.to_float(images, out=self.buffer[: len(images)])


def make_batch_loader(stream: ImageBatchStream, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``stream``'s ready-made batches with ``num_workers`` processes (0: in-process)."""
    if num_workers < 0:
        raise InvalidValueError(f"Expected num_workers >= 0, but got {num_workers}.")
    num_workers = min(num_workers, stream.num_batches())
    if num_workers > 0:
        single_threaded_opencv()
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      prefetch_factor=2 if num_workers > 0 else None)
