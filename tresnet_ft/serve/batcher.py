"""Dynamic batching: images from concurrent requests share one forward pass.

Requests put their preprocessed images on one bounded queue; each worker thread owns a
:class:`~tresnet_ft.inference.runtime.Runtime` and loops: take the first waiting image, then keep
taking until ``max_batch_size`` images or ``batch_timeout`` seconds after the first, run the batch,
hand every image its logits row. A full queue refuses at once (the app answers 503) instead of
letting waiting times grow without bound; an image whose request already gave up (timed out) is
dropped before it costs a forward pass.

Threads, not processes: PyTorch and ONNX Runtime release the GIL while they compute and use every
core for one batch, so a second process would only compete for the same cores and hold a second
copy of everything.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from ..errors import InvalidValueError
from ..inference.runtime import Runtime

log = logging.getLogger(__name__)

_STOP = None  # one per worker, put on the queue by stop()


class QueueFullError(Exception):
    """The queue holds ``max_queue`` images already: the request is refused, not queued."""


@dataclass
class _Job:
    image: torch.Tensor  # uint8 [3, S, S]
    future: Future  # resolves to float32 [K]


@dataclass
class BatchStats:
    """Counters for /health and benchmarks: forward passes run, images in them, images refused."""

    batches: int = 0
    images: int = 0
    refused: int = 0


class BatchQueue:
    """Batches images over ``runtimes`` (one worker thread each).

    Args:
        runtimes: loaded classifiers; each is used by one thread only.
        max_batch_size: the most images in one forward pass ``[B, 3, S, S]``.
        batch_timeout: seconds a worker waits, after the first image, for more to fill the batch
            (0: take only what is already waiting).
        max_queue: images that may wait; more are refused with :class:`QueueFullError`.
    """

    def __init__(self, runtimes: list[Runtime], max_batch_size: int, batch_timeout: float, max_queue: int) -> None:
        if max_batch_size < 1 or batch_timeout < 0 or max_queue < 1 or not runtimes:
            raise InvalidValueError(f"Expected max_batch_size >= 1, batch_timeout >= 0, max_queue >= 1 and at least "
                                    f"one worker, but got {max_batch_size}, {batch_timeout}, {max_queue} and "
                                    f"{len(runtimes)}.")
        self.max_batch_size, self.batch_timeout = max_batch_size, batch_timeout
        self.stats = BatchStats()
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._submit_lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, args=(runtime,), name=f"tresnet-ft-batch-{index}",
                                          daemon=True) for index, runtime in enumerate(runtimes)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Let the workers finish the images already queued, then end them."""
        for _ in self._threads:
            self._jobs.put(_STOP)
        for thread in self._threads:
            thread.join(timeout)

    @property
    def alive(self) -> bool:
        return all(thread.is_alive() for thread in self._threads)

    @property
    def waiting(self) -> int:
        return self._jobs.qsize()

    def submit(self, images: list[torch.Tensor]) -> list[Future]:
        """Queue ``images`` (each ``uint8 [3, S, S]``); the futures resolve to their ``float32 [K]`` logits.

        All or nothing: raises :class:`QueueFullError` when they do not all fit.
        """
        jobs = [_Job(image, Future()) for image in images]
        with self._submit_lock:  # so that two requests cannot each fit half of their images
            if self._jobs.maxsize - self._jobs.qsize() < len(jobs):
                self.stats.refused += len(jobs)
                raise QueueFullError(f"{self._jobs.qsize()} images are waiting (the most is {self._jobs.maxsize})")
            for job in jobs:
                self._jobs.put_nowait(job)
        return [job.future for job in jobs]

    def _work(self, runtime: Runtime) -> None:
        while True:
            jobs, stopping = self._next_batch()
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]  # drop given-up ones
            if jobs:
                self._run(runtime, jobs)
            if stopping:
                return

    def _next_batch(self) -> tuple[list[_Job], bool]:
        """Up to ``max_batch_size`` jobs (blocking for the first), and whether a stop signal came."""
        first = self._jobs.get()
        if first is _STOP:
            return [], True
        jobs, deadline = [first], time.monotonic() + self.batch_timeout
        while len(jobs) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                job = self._jobs.get(timeout=remaining) if remaining > 0 else self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _run(self, runtime: Runtime, jobs: list[_Job]) -> None:
        try:
            logits = runtime.logits(torch.stack([job.image for job in jobs]))
        except Exception as error:  # a bug or a broken model: every waiting request gets a 500, the worker lives
            log.exception("A batch of %d image(s) failed in %s", len(jobs), runtime.name)
            for job in jobs:
                job.future.set_exception(error)
            return
        self.stats.batches += 1
        self.stats.images += len(jobs)
        for job, row in zip(jobs, logits):
            job.future.set_result(row)
