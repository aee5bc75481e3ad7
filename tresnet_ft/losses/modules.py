"""``nn.Module`` forms of the losses in :mod:`.functional`, for ``criterion = Loss(...)`` code
and for the registry (:mod:`.registry`).

Each module takes its function's settings (everything after ``logits, targets``), by position or
by name, with the function's own defaults: a setting is declared and documented once, in the
function. The settings are plain attributes (``criterion.gamma_neg``); a tensor setting such as
``pos_weight`` is a buffer, so it follows the module across devices.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import nn

from .functional import (_check_reduction, asymmetric_loss, asymmetric_loss_single_label, binary_cross_entropy,
                         cross_entropy, soft_target_cross_entropy)


class _FunctionLoss(nn.Module):
    """Holds the settings of ``function`` and applies it: ``(logits [N, K], targets) -> loss``."""

    function: Callable[..., torch.Tensor]
    buffers: tuple[str, ...] = ()  # tensor settings, registered as buffers

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        settings = list(inspect.signature(self.function).parameters.values())[2:]
        bound = inspect.Signature(settings).bind(*args, **kwargs)
        bound.apply_defaults()
        _check_reduction(bound.arguments["reduction"])
        self._settings = tuple(bound.arguments)
        for name, value in bound.arguments.items():
            if name in self.buffers:
                self.register_buffer(name, value)
            else:
                setattr(self, name, value)

    def settings(self) -> dict[str, Any]:
        """The current settings (attributes may have been changed since construction)."""
        return {name: getattr(self, name) for name in self._settings}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.function(logits, targets, **self.settings())

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={value!r}" for name, value in self.settings().items() if name not in self.buffers)


class LabelSmoothingCrossEntropy(_FunctionLoss):
    """Module form of :func:`cross_entropy`: ``(logits [N, K], labels [N]) -> loss``.

    ``[N, K]`` soft targets (mixup / cutmix, which already spread the mass) go to
    :func:`soft_target_cross_entropy` without further smoothing.
    """

    function = staticmethod(cross_entropy)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.ndim == 2:
            return soft_target_cross_entropy(logits, labels, self.reduction)
        return super().forward(logits, labels)


class SoftTargetCrossEntropy(_FunctionLoss):
    """Module form of :func:`soft_target_cross_entropy`: ``(logits [N, K], targets [N, K])``."""

    function = staticmethod(soft_target_cross_entropy)


class BinaryCrossEntropy(_FunctionLoss):
    """Module form of :func:`binary_cross_entropy`: ``(logits [N, K], targets [N, K])``."""

    function = staticmethod(binary_cross_entropy)
    buffers = ("pos_weight",)


class AsymmetricLoss(_FunctionLoss):
    """Module form of :func:`asymmetric_loss`: ``(logits [N, K], targets [N, K]) -> loss``."""

    function = staticmethod(asymmetric_loss)


class AsymmetricLossSingleLabel(_FunctionLoss):
    """Module form of :func:`asymmetric_loss_single_label`: ``(logits [N, K], labels [N])``."""

    function = staticmethod(asymmetric_loss_single_label)
