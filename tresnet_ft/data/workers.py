"""Loader-process settings shared by training and prediction (no Lightning here)."""

from __future__ import annotations

import os

import cv2
from ..errors import InvalidValueError


MAX_WORKERS_PER_PROCESS = 8  # more rarely helps one GPU and costs memory per worker


def workers_per_process(cores: int, processes: int) -> int:
    """Loader workers for each of ``processes`` training processes sharing ``cores`` CPU cores.

    Each process gets its share of the cores, minus one for its own training loop, at least 1
    and at most 8: ``workers_per_process(64, 8) == 7``, ``workers_per_process(2, 1) == 1``.
    """
    if cores < 1 or processes < 1:
        raise InvalidValueError(f"Expected cores and processes to be at least 1, but got cores={cores}, "
                         f"processes={processes}.")
    return max(1, min(MAX_WORKERS_PER_PROCESS, cores // processes - 1))


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask on Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_num_workers(processes: int = 1) -> int:
    """Loader workers per process when ``processes`` processes on this machine share its cores (1..8)."""
    return workers_per_process(usable_cores(), processes)


def single_threaded_opencv() -> None:
    """Make OpenCV run its ops on the calling thread, before loader workers are forked.

    Workers are the parallelism: OpenCV's own thread pool would fight them for the same cores.
    It must be set in the parent: a forked worker that reconfigures a pool it inherited mid-use
    can deadlock (seen here in ``pthread_cond_destroy``).
    """
    cv2.setNumThreads(1)
