"""BatchNorm fused with its activation, in two flavours with identical parameters and outputs.

* :class:`BatchNormAct2d` (``norm="bn"``): ``F.batch_norm`` then the activation, left to autograd.
  It keeps the norm's input *and* the activation's input for backward.
* :class:`InPlaceABN` (``norm="inplace_abn"``): the same function, but training keeps only the
  *output* for backward (Rota Bulò et al., 2018). Backward inverts the activation and the affine
  transform to recover the normalised input, so each conv → norm → act unit stores one tensor
  instead of three.

Both follow BatchNorm's parameter convention (scale = ``weight``), so timm's state dicts load
with plain ``load_state_dict``. Checkpoints from the original InPlace-ABN (scale = |w| + eps) are
converted on load by :mod:`tresnet_ft.models.weights`.

Statistics are always computed in float32, whatever autocast does to the input. With a process
group set (:func:`convert_sync_norm`), batch statistics and the backward reductions are summed
across processes, which makes either layer a synchronised norm for multi-GPU training.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .sync_norm import (affine_coefficients, distributed_batch_norm, distributed_batch_norm_backward,
                        per_channel)
from ..errors import InvalidValueError

# Below this |weight| the affine transform cannot be inverted accurately: x_hat = (z - bias) / w.
# Each block's last norm starts at exactly zero, so the guard is needed from the first step.
MIN_INVERTIBLE_WEIGHT = 1e-3


class _NormActFunction(torch.autograd.Function):
    """Training-mode batch norm + leaky ReLU (``slope == 1`` is the identity) with a hand-written
    backward that saves either the output (in-place mode) or the input (classic mode).

    Without a process group the heavy lifting is ATen's own batch-norm kernels: forward is
    ``native_batch_norm``, and backward rebuilds the input from the output (two elementwise
    passes) and calls ``native_batch_norm_backward``. With a process group the statistics and
    the two backward reductions are summed across processes.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, slope,
                save_output, group):
        if group is None:
            y, mean, invstd = torch.native_batch_norm(x, weight, bias, running_mean, running_var,
                                                      True, momentum, eps)
        else:
            y, mean, invstd = distributed_batch_norm(x, weight, bias, running_mean, running_var,
                                                      momentum, eps, group)
        if slope != 1.0:
            y = F.leaky_relu_(y, slope)
        ctx.save_for_backward(y if save_output else x, weight, bias, mean, invstd)
        ctx.slope, ctx.eps, ctx.save_output, ctx.group = slope, eps, save_output, group
        return y

    @staticmethod
    def backward(ctx, grad_out):
        kept, weight, bias, mean, invstd = ctx.saved_tensors
        if ctx.save_output:
            # Invert the activation: a leaky ReLU with slope 1/slope gives the pre-activation z.
            grad_z = grad_out if ctx.slope == 1.0 else \
                torch.ops.aten.leaky_relu_backward(grad_out, kept, ctx.slope, True)
            z = kept if ctx.slope == 1.0 else F.leaky_relu(kept, 1.0 / ctx.slope)
            # z = weight * x_hat + bias, so the BatchNorm backward kernel fed with input z,
            # "mean" bias and "invstd" 1/weight sees the right x_hat; weight**2 * invstd makes its
            # final factor weight * invstd. This avoids rebuilding x itself.
            inputs, centre, spread = z, bias, weight.reciprocal()
            gain = weight.square() * invstd
        else:
            inputs, centre, spread, gain = kept, mean, invstd, weight
            grad_z = grad_out
            if ctx.slope != 1.0:
                scale, shift = affine_coefficients(weight, bias, mean, invstd)
                z = torch.addcmul(per_channel(shift), kept.float(), per_channel(scale))
                # Only z's sign matters here; in grad_out's dtype the batch-norm kernel below gets
                # a gradient of its input's dtype under bf16/fp16 autocast.
                grad_z = torch.ops.aten.leaky_relu_backward(grad_out, z.to(grad_out.dtype), ctx.slope, False)
        if ctx.group is None:
            grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
                grad_z, inputs, gain, None, None, centre, spread, True, ctx.eps, [True, True, True])
        else:
            grad_x, grad_weight, grad_bias = distributed_batch_norm_backward(
                grad_z, inputs, centre, spread, gain, ctx.group)
        return grad_x, grad_weight, grad_bias, None, None, None, None, None, None, None


class BatchNormAct2d(nn.Module):
    """BatchNorm2d followed by LeakyReLU (or nothing), computed by autograd.

    Args:
        num_features: channels ``C``.
        activation: ``"leaky_relu"`` or ``"identity"``.
        slope: negative slope of the leaky ReLU.
        eps, momentum: as in :class:`torch.nn.BatchNorm2d`.

    Shapes:
        ``[N, C, H, W]`` -> ``[N, C, H, W]`` (any memory format; statistics in float32).
    """

    def __init__(self, num_features: int, activation: str = "leaky_relu", slope: float = 0.01,
                 eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        if activation not in ("leaky_relu", "identity"):
            raise InvalidValueError(f"Expected activation 'leaky_relu' or 'identity', but got {activation!r}.")
        self.num_features, self.activation, self.eps, self.momentum = num_features, activation, eps, momentum
        self.slope = float(slope) if activation == "leaky_relu" else 1.0
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.synchronised = False  # set by convert_sync_norm
        self.process_group: Optional[Any] = None  # None: the default (world) group

    def _stats_group(self) -> Optional[Any]:
        """The process group to reduce statistics over, or ``None`` for local statistics."""
        if not self.synchronised or not dist.is_available() or not dist.is_initialized():
            return None
        return self.process_group if self.process_group is not None else dist.group.WORLD

    def extra_repr(self) -> str:
        act = f"leaky_relu({self.slope:g})" if self.activation == "leaky_relu" else "identity"
        return f"{self.num_features}, eps={self.eps:g}, momentum={self.momentum}, act={act}"

    def _activate(self, y: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(y, self.slope) if self.slope != 1.0 else y

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         False, 0.0, self.eps)
        return self._activate(y)

    def _fused_train_forward(self, x: torch.Tensor, save_output: bool) -> torch.Tensor:
        return _NormActFunction.apply(x, self.weight, self.bias, self.running_mean, self.running_var,
                                      self.momentum, self.eps, self.slope, save_output, self._stats_group())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._eval_forward(x)
        self.num_batches_tracked.add_(1)
        if self._stats_group() is not None:
            return self._fused_train_forward(x, save_output=False)
        y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         True, self.momentum, self.eps)
        return self._activate(y)


class InPlaceABN(BatchNormAct2d):
    """In-place activated BatchNorm: same function and parameters as :class:`BatchNormAct2d`, but
    training keeps only the output for backward.

    When some ``|weight| < MIN_INVERTIBLE_WEIGHT`` (e.g. the zero-initialised last norm of a
    fresh block) the output does not determine the input, so that call keeps the input instead.

    Deciding that reads the weights on the host: one device sync per layer per training call.
    :func:`refresh_invertibility` decides for every layer of a model with one batched reduction
    and one sync, and each layer uses that decision for its next training call instead of
    syncing itself; the training module refreshes once per step. (The weights' version counter
    cannot stand in for "the weights changed": the fused optimizers do not bump it.) Under
    ``torch.compile`` a layer cannot sync: it uses the last refreshed decision as a constant, so
    a recompile happens only when a decision flips, and keeps its input if never refreshed.

    Shapes:
        ``[N, C, H, W]`` -> ``[N, C, H, W]``.
    """

    def __init__(self, num_features: int, activation: str = "leaky_relu", slope: float = 0.01,
                 eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(num_features, activation, slope, eps, momentum)
        self.keeps_output = False  # the last decision: every |weight| >= MIN_INVERTIBLE_WEIGHT
        self._decision_fresh = False  # made for the current weights, by refresh_invertibility

    def decide(self, invertible: bool) -> None:
        """Set the decision for the next training call (see :func:`refresh_invertibility`)."""
        self.keeps_output, self._decision_fresh = bool(invertible), True

    def _invertible(self) -> bool:
        if torch.compiler.is_compiling():
            return self.keeps_output  # reading the weights here would break the graph at every layer
        if not self._decision_fresh:
            self.keeps_output = bool((self.weight.detach().abs() >= MIN_INVERTIBLE_WEIGHT).all())
        self._decision_fresh = False  # the weights may change before the next call
        return self.keeps_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._eval_forward(x)
        self.num_batches_tracked.add_(1)
        return self._fused_train_forward(x, save_output=self._invertible())


def refresh_invertibility(module: nn.Module, *also_read: torch.Tensor) -> list[float]:
    """Decide for every :class:`InPlaceABN` in ``module`` whether its next training call may keep
    only its output, with one batched reduction and a single device-to-host read.

    Call it before each training forward (the weights change at every optimizer step); the
    layers then make no sync of their own. ``also_read``: one-element tensors on the same device
    (e.g. the last loss) read in the same sync, returned as floats in order.

    Example::

        refresh_invertibility(model)
        loss = criterion(model(images), targets)  # no host sync inside the norms
    """
    layers = [m for m in module.modules() if isinstance(m, InPlaceABN)]
    reads = [t.detach().reshape(1).float() for t in also_read]
    if layers:
        smallest = torch.stack(torch._foreach_norm([m.weight.detach() for m in layers], float("-inf")))
        reads.insert(0, (smallest >= MIN_INVERTIBLE_WEIGHT).float())
    if not reads:
        return []
    values = torch.cat(reads).tolist()  # the one host sync
    for layer, invertible in zip(layers, values):
        layer.decide(invertible > 0.5)
    return values[len(layers):]


NORM_LAYERS: dict[str, type[BatchNormAct2d]] = {
    "inplace_abn": InPlaceABN,
    "bn": BatchNormAct2d,
}


def create_norm_act(norm: str, num_features: int, activation: str, slope: float = 0.01) -> BatchNormAct2d:
    """Build the norm layer registered as ``norm`` (``"inplace_abn"`` or ``"bn"``)."""
    if norm not in NORM_LAYERS:
        raise InvalidValueError(f"Expected norm to be one of {sorted(NORM_LAYERS)}, but got {norm!r}.")
    return NORM_LAYERS[norm](num_features, activation=activation, slope=slope)


def convert_sync_norm(module: nn.Module, process_group: Optional[Any] = None) -> nn.Module:
    """Make every norm layer of ``module`` synchronise its batch statistics across processes.

    Works in place and returns ``module``. ``process_group=None`` means the default (world)
    group. Use this instead of ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``, which does not
    know these layers; outside an initialised process group the layers behave as before.
    """
    for layer in module.modules():
        if isinstance(layer, BatchNormAct2d):
            layer.synchronised = True
            layer.process_group = process_group
    return module
