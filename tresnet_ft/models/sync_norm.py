"""Batch-norm statistics and backward reductions summed over a process group (synchronised norms).

These are the distributed counterparts of ATen's ``native_batch_norm`` and
``native_batch_norm_backward``, used by :mod:`tresnet_ft.models.norm_act` when a layer has a
process group (:func:`~tresnet_ft.models.norm_act.convert_sync_norm`).

Each direction makes exactly one collective and never reads device data on the host, as
``torch.nn.SyncBatchNorm`` does; unlike torch's version it runs on every device (torch's
``batch_norm_stats`` family has no CPU kernels), so CPU tests over gloo check the same code
that runs over NCCL:

* forward: every rank computes its ``[count, mean, M2]`` (``M2``: sum of squared deviations
  from its own mean) and one ``all_gather`` shares them; the parallel-variance formula of Chan
  et al. combines them. Ranks may hold different batch sizes, and no rank ever forms
  ``sum(x**2) - n * mean**2``, which cancels catastrophically when activations have a large mean.
* backward: one ``all_reduce`` of ``[sum(dz), sum(dz * x_hat), count]``.

Statistics and parameter gradients are float32 (float64 for float64 input). Activations keep
their dtype: reductions accumulate in float32 without a float32 copy of the input, and the
elementwise passes apply float32 per-channel coefficients while writing into a tensor of the
activation's dtype (on CUDA the arithmetic happens in float32 registers; the CPU makes
temporaries, which only matters for speed there).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist
from ..errors import InvalidValueError

_REDUCE_DIMS = (0, 2, 3)


def per_channel(t: torch.Tensor) -> torch.Tensor:
    """``[C]`` -> ``[1, C, 1, 1]`` for broadcasting against an ``[N, C, H, W]`` map."""
    return t.view(1, -1, 1, 1)


def affine_coefficients(weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
                        invstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``scale, shift`` (each ``[C]``, in invstd's dtype: float32, or float64 for
    float64 activations) with ``norm(x) = x * scale + shift``."""
    scale = weight.to(invstd.dtype) * invstd
    return scale, bias.to(invstd.dtype) - mean * scale


def _world_size(group: Optional[Any]) -> int:
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for float32 and lower-precision activations, float64 for float64 ones."""
    return torch.promote_types(x.dtype, torch.float32)


def _check_feature_map(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dim() != 4:
        raise InvalidValueError(f"Expected an [N, C, H, W] feature map, but got shape {tuple(x.shape)}.")
    if weight.shape != (x.shape[1],):
        raise InvalidValueError(f"Expected weight of shape ({x.shape[1]},) for {x.shape[1]} channels, "
                         f"but got {tuple(weight.shape)}.")


def _local_moments(x: torch.Tensor) -> torch.Tensor:
    """This rank's ``[count, mean (C), M2 (C)]`` row, ``[2C + 1]``.

    The count comes from the shape, so it is known without reading the device. The deviations
    are held in x's dtype, the only full-size temporary of the forward pass. For bfloat16 that
    rounds each to 8 bits, a random relative error of about 2**-8 / sqrt(n) in the variance of
    n values: far below the batch variance's own sampling noise (about sqrt(2 / n)).
    """
    channels, count = x.shape[1], x.numel() // max(x.shape[1], 1)
    dtype = _stats_dtype(x)
    if count == 0:  # an empty shard still joins the collective, with zero weight
        return torch.zeros(2 * channels + 1, dtype=dtype, device=x.device)
    mean = x.sum(_REDUCE_DIMS, dtype=dtype) / count
    centred = torch.sub(x, per_channel(mean), out=torch.empty_like(x))
    m2 = torch.linalg.vector_norm(centred, dim=_REDUCE_DIMS, dtype=dtype).square()
    return torch.cat([mean.new_full((1,), count), mean, m2])


def _all_gather_rows(row: torch.Tensor, group: Optional[Any]) -> torch.Tensor:
    """``[L]`` per rank -> ``[world, L]``, in one collective.

    ``all_gather`` with a list works on every backend (torch's SyncBatchNorm falls back to it for
    gloo, which lacks the single-tensor all-gather), so the CPU tests run the code NCCL runs.
    """
    world = _world_size(group)
    if world == 1:
        return row.unsqueeze(0)
    rows = [torch.empty_like(row) for _ in range(world)]
    dist.all_gather(rows, row, group=group)
    return torch.stack(rows)


def _combine_moments(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[world, 2C + 1]`` rows of ``[count, mean, M2]`` -> global mean ``[C]``, biased variance
    ``[C]`` and count ``[1]`` (Chan et al.: ``M2 = sum M2_i + sum n_i (mean_i - mean)**2``)."""
    channels = (rows.shape[1] - 1) // 2
    counts, means, m2s = rows[:, :1], rows[:, 1:channels + 1], rows[:, channels + 1:]
    count = counts.sum(0)
    mean = (counts * means).sum(0) / count
    m2 = m2s.sum(0) + (counts * (means - mean).square()).sum(0)
    return mean, m2 / count, count


def _update_running_stats(running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
                          mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor,
                          momentum: float) -> None:
    if running_mean is None or running_var is None:
        return
    # Like nn.BatchNorm2d, the running variance is unbiased over the whole (global) batch; the
    # count stays on the device, so this needs no sync.
    unbiased = var * count / (count - 1).clamp_min(1)
    with torch.no_grad():
        running_mean.lerp_(mean.to(running_mean.dtype), momentum)
        running_var.lerp_(unbiased.to(running_var.dtype), momentum)


def distributed_batch_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                           running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
                           momentum: float, eps: float, group: Optional[Any],
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``native_batch_norm`` in training mode with statistics over every process of ``group``.

    Meant for the forward of an ``autograd.Function`` (it writes into fresh tensors with
    ``out=``, which autograd cannot trace); every rank of ``group`` must call it.

    Args:
        x: ``[N, C, H, W]`` activations; ``N`` may differ between ranks (even be 0).
        weight, bias: ``[C]`` affine parameters.
        running_mean, running_var: ``[C]`` buffers updated in place (unbiased variance).
        group: the process group; ``None`` or a one-process group gives local statistics.

    Returns:
        ``y`` (``[N, C, H, W]``, x's dtype and memory format), ``mean`` and ``invstd``
        (``[C]``, float32; float64 for float64 input).
    """
    _check_feature_map(x, weight)
    mean, var, count = _combine_moments(_all_gather_rows(_local_moments(x), group))
    invstd = torch.rsqrt(var + eps)
    _update_running_stats(running_mean, running_var, mean, var, count, momentum)
    scale, shift = affine_coefficients(weight, bias, mean, invstd)
    # Written straight into x's dtype: one rounding, and the float32 arithmetic stays in registers
    # on CUDA.
    y = torch.addcmul(per_channel(shift), x, per_channel(scale), out=torch.empty_like(x))
    return y, mean, invstd


def _local_sums(grad_z: torch.Tensor, inputs: torch.Tensor, centre: torch.Tensor,
                spread: torch.Tensor, gain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's ``sum(dz)`` and ``sum(dz * x_hat)`` (``[C]`` each, float32).

    ATen's batch-norm backward with only the parameter gradients requested is exactly these two
    reductions, fused, accumulated in float32 and centred inside the kernel, on CPU and CUDA.
    """
    if inputs.numel() == 0:
        zeros = torch.zeros_like(centre)
        return zeros, zeros.clone()
    _, sum_dz_xhat, sum_dz = torch.ops.aten.native_batch_norm_backward(
        grad_z, inputs, gain, None, None, centre, spread, True, 0.0, [False, True, True])
    return sum_dz, sum_dz_xhat


def _input_gradient(grad_z: torch.Tensor, inputs: torch.Tensor, centre: torch.Tensor,
                    spread: torch.Tensor, gain: torch.Tensor, mean_dz: torch.Tensor,
                    mean_dz_xhat: torch.Tensor) -> torch.Tensor:
    """``(dz - mean_dz - x_hat * mean_dz_xhat) * gain * spread`` in three elementwise passes
    that write into one tensor of the activations' dtype."""
    k = gain * spread
    # Centre first, as the ATen kernels do: expanding x_hat into inputs * spread - centre * spread
    # would cancel two large terms when the activations have a large mean.
    grad_x = torch.sub(inputs, per_channel(centre), out=torch.empty_like(inputs))
    torch.addcmul(per_channel(-k * mean_dz), grad_x, per_channel(-k * spread * mean_dz_xhat), out=grad_x)
    return grad_x.addcmul_(grad_z, per_channel(k))


def distributed_batch_norm_backward(grad_z: torch.Tensor, inputs: torch.Tensor, centre: torch.Tensor,
                                    spread: torch.Tensor, gain: torch.Tensor, group: Optional[Any],
                                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``native_batch_norm_backward`` with the two reductions summed over ``group``.

    ``x_hat = (inputs - centre) * spread`` and ``grad_x = (...) * gain * spread``, the same
    contract as the ATen kernel, so both backward modes of the in-place norm share it.

    Args:
        grad_z: ``[N, C, H, W]`` gradient of the normalised (pre-activation) output.
        inputs: ``[N, C, H, W]`` the tensor ``x_hat`` is rebuilt from.
        centre, spread, gain: ``[C]`` per-channel factors of the contract above.
        group: the process group the forward statistics were computed over.

    Returns:
        ``grad_x`` (``[N, C, H, W]``, in inputs' dtype, the activations'), and this rank's
        ``grad_weight`` and ``grad_bias`` (``[C]``, gain's dtype; DDP sums those over ranks).
    """
    _check_feature_map(inputs, centre)
    if grad_z.dtype != inputs.dtype:
        # A float32 grad_z next to low-precision inputs only comes from promotion in the caller
        # (leaky_relu_backward against a float32 z); ATen's kernel wants one activation dtype.
        grad_z = grad_z.to(inputs.dtype)
    dtype = _stats_dtype(inputs)
    centre, spread, factor = centre.to(dtype), spread.to(dtype), gain.to(dtype)
    sum_dz, sum_dz_xhat = _local_sums(grad_z, inputs, centre, spread, factor)
    count = sum_dz.new_full((1,), inputs.numel() // max(inputs.shape[1], 1))
    totals = torch.cat([sum_dz, sum_dz_xhat, count])
    if _world_size(group) > 1:
        dist.all_reduce(totals, op=dist.ReduceOp.SUM, group=group)
    channels = centre.shape[0]
    global_count = totals[2 * channels:]
    grad_x = _input_gradient(grad_z, inputs, centre, spread, factor,
                             totals[:channels] / global_count, totals[channels:2 * channels] / global_count)
    return grad_x, sum_dz_xhat.to(gain.dtype), sum_dz.to(gain.dtype)
