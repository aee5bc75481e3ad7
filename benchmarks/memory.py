"""Deterministic activation-memory measurement: the bytes autograd keeps for backward."""
from __future__ import annotations

import torch
from torch import nn


def saved_activation_bytes(model: nn.Module, inputs: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd saves during one forward pass of ``model``.

    Parameters are excluded (they exist whether or not we train); a storage saved by several
    ops (e.g. an in-place ABN output that the next conv also keeps) is counted once, as it
    is in memory. Unlike timing, this figure is exactly repeatable on a noisy machine.

    Shapes:
        ``inputs``: whatever ``model`` takes, e.g. ``[B, 3, H, W]``.
    """
    storages: dict[int, int] = {}
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_ptrs:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = model(inputs)
    del output
    return sum(storages.values())
