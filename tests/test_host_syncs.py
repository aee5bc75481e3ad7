"""The training step's host syncs: at most one per optimizer step in a real Lightning fit.

On a GPU each device-to-host read (``.item()``, ``bool(t)``, ``.tolist()``, a data-dependent
shape) stops the CPU from queueing kernels ahead. They cost nothing on a CPU, so they are counted
here (benchmarks/bench_host_syncs.py): a 12-step fit minus a 4-step fit.
"""
from __future__ import annotations

import pytest

from benchmarks.bench_host_syncs import syncs_per_step


@pytest.mark.slow
def test_a_training_step_makes_at_most_one_host_sync(tmp_path):
    per_step, kinds = syncs_per_step(tmp_path)
    assert per_step <= 1.0, f"{per_step} host syncs per step: {kinds}"
    # The one sync is the batched read before the forward: norms' decisions and the last loss.
    assert kinds == {"tolist": 8}, kinds
