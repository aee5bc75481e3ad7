"""Count device-to-host synchronisations, on any device, including the CPU.

On a GPU every read of device data by the host (``.item()``, ``bool(t)``, ``.tolist()``,
``.cpu()``, an op whose output shape depends on the data) stops the CPU from queueing kernels
ahead of the GPU. On the CPU those reads cost nothing, so they go unnoticed there; this counter
finds them anyway, which lets a CPU-only test hold the training step to a budget of syncs.

What is counted:

- the dispatcher ops that read a value or size the output by the data:
  ``aten._local_scalar_dense`` (``.item()``, ``bool``, ``float``, ``int``), ``nonzero``,
  ``masked_select``, ``unique`` and friends;
- ``Tensor.tolist``, ``Tensor.numpy`` and ``Tensor.cpu``, which on the CPU never reach the
  dispatcher (they would copy from the device on a GPU).

On a CUDA device ``torch.cuda.set_sync_debug_mode("warn")`` is the ground truth; this counter
is its CPU stand-in.
"""
from __future__ import annotations

import collections
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_OVERLOAD_PACKETS = (
    torch.ops.aten._local_scalar_dense,
    torch.ops.aten.nonzero,
    torch.ops.aten.masked_select,
    torch.ops.aten.unique_consecutive,
    torch.ops.aten._unique,
    torch.ops.aten._unique2,
    torch.ops.aten.unique_dim,
)
_HOST_READ_METHODS = ("tolist", "numpy", "cpu")


class HostSyncCounter(TorchDispatchMode):
    """A context manager that counts host syncs by kind (``counts``) and in total (``total``).

    Example::

        with HostSyncCounter() as syncs:
            loss = model(x).sum(); loss.backward()
        assert syncs.total == 0, syncs.counts
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()
        self._originals: dict[str, Callable[..., Any]] = {}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in _OVERLOAD_PACKETS:
            self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self) -> "HostSyncCounter":
        for name in _HOST_READ_METHODS:
            self._originals[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._counting(name, self._originals[name]))
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, original)
        self._originals.clear()
        super().__exit__(*exc)

    def _counting(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self.counts[name] += 1
            return method(tensor, *args, **kwargs)

        return counted
