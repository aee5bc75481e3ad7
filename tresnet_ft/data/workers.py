"""Loader-process settings shared by training and prediction (no Lightning here)."""

from __future__ import annotations

import os

import cv2


def default_num_workers() -> int:
    """One loader worker per CPU core the process may use, minus one for the training loop (1..8)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores - 1))


def single_threaded_opencv() -> None:
    """Make OpenCV run its ops on the calling thread, before loader workers are forked.

    Workers are the parallelism: OpenCV's own thread pool would fight them for the same cores.
    It must be set in the parent: a forked worker that reconfigures a pool it inherited mid-use
    can deadlock (seen here in ``pthread_cond_destroy``).
    """
    cv2.setNumThreads(1)
