"""Batch-norm statistics and backward reductions summed over a process group (synchronised norms).

These are the distributed counterparts of ATen's ``native_batch_norm`` and
``native_batch_norm_backward``, used by :mod:`tresnet_ft.models.norm_act` when a layer has a
process group (:func:`~tresnet_ft.models.norm_act.convert_sync_norm`).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist

_REDUCE_DIMS = (0, 2, 3)


def per_channel(t: torch.Tensor) -> torch.Tensor:
    """``[C]`` -> ``[1, C, 1, 1]`` for broadcasting against an ``[N, C, H, W]`` map."""
    return t.view(1, -1, 1, 1)


def _world_size(group: Optional[Any]) -> int:
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def _all_reduce_sum(t: torch.Tensor, group: Optional[Any]) -> torch.Tensor:
    if _world_size(group) > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def _batch_stats(x32: torch.Tensor, group: Optional[Any]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean and biased variance per channel over the (possibly distributed) batch.

    Two reductions (mean first, then squared deviations) avoid the cancellation of the
    sum-of-squares formula when activations have a large mean.
    """
    local_count = x32.numel() // x32.shape[1]
    count = torch.tensor([float(local_count)], device=x32.device)
    count = int(_all_reduce_sum(count, group).item()) if _world_size(group) > 1 else local_count
    mean = _all_reduce_sum(x32.sum(_REDUCE_DIMS), group) / count
    var = _all_reduce_sum((x32 - per_channel(mean)).square().sum(_REDUCE_DIMS), group) / count
    return mean, var, count


def affine_coefficients(weight, bias, mean, invstd):
    """Per-channel ``scale, shift`` with ``norm(x) = x * scale + shift``, in float32."""
    scale = weight.float() * invstd
    return scale, bias.float() - mean * scale


def distributed_batch_norm(x, weight, bias, running_mean, running_var, momentum, eps, group):
    """``native_batch_norm`` with statistics over every process of ``group``."""
    x32 = x.float()
    mean, var, count = _batch_stats(x32, group)
    invstd = torch.rsqrt(var + eps)
    with torch.no_grad():
        running_mean.lerp_(mean, momentum)
        running_var.lerp_(var * (count / max(count - 1, 1)), momentum)
    scale, shift = affine_coefficients(weight, bias, mean, invstd)
    y = torch.addcmul(per_channel(shift), x32, per_channel(scale)).to(x.dtype)
    return y, mean, invstd


def distributed_batch_norm_backward(grad_z, inputs, centre, spread, gain, group):
    """``native_batch_norm_backward`` with the two reductions summed over ``group``.

    ``x_hat = (inputs - centre) * spread`` and ``grad_x = (...) * gain * spread``, the same
    contract as the ATen kernel, so both backward modes share it.
    """
    dz = grad_z.float()
    x_hat = (inputs.float() - per_channel(centre.float())) * per_channel(spread.float())
    grad_bias = dz.sum(_REDUCE_DIMS)
    grad_weight = (dz * x_hat).sum(_REDUCE_DIMS)
    # Parameter gradients stay local (DDP averages them); the input gradient needs the global
    # reductions because the statistics were global.
    count = torch.tensor([float(inputs.numel() // inputs.shape[1])], device=inputs.device)
    count = _all_reduce_sum(count, group)
    sums = _all_reduce_sum(torch.stack([grad_bias, grad_weight]), group) / count
    grad_x = (dz - per_channel(sums[0]) - x_hat * per_channel(sums[1]))
    grad_x = grad_x * per_channel(gain.float() * spread.float())
    return grad_x.to(grad_z.dtype), grad_weight.to(gain.dtype), grad_bias.to(gain.dtype)


