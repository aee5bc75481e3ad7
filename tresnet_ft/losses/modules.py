"""``nn.Module`` forms of the losses in :mod:`.functional`, for ``criterion = Loss(...)`` code
and for the registry (:mod:`.registry`)."""
from __future__ import annotations

import torch
from torch import nn

from .functional import (Reduction, _check_reduction, asymmetric_loss, asymmetric_loss_single_label,
                         binary_cross_entropy, cross_entropy, soft_target_cross_entropy)


class LabelSmoothingCrossEntropy(nn.Module):
    """Module form of :func:`cross_entropy`: ``(logits [N, K], labels [N]) -> loss``.

    ``[N, K]`` soft targets (mixup / cutmix, which already spread the mass) go to
    :func:`soft_target_cross_entropy` without further smoothing.
    """

    def __init__(self, label_smoothing: float = 0.0, reduction: Reduction = "mean") -> None:
        super().__init__()
        _check_reduction(reduction)
        self.label_smoothing = label_smoothing
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.ndim == 2:
            return soft_target_cross_entropy(logits, labels, self.reduction)
        return cross_entropy(logits, labels, self.label_smoothing, self.reduction)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"


class SoftTargetCrossEntropy(nn.Module):
    """Module form of :func:`soft_target_cross_entropy`: ``(logits [N, K], targets [N, K])``."""

    def __init__(self, reduction: Reduction = "mean") -> None:
        super().__init__()
        _check_reduction(reduction)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return soft_target_cross_entropy(logits, targets, self.reduction)


class BinaryCrossEntropy(nn.Module):
    """Module form of :func:`binary_cross_entropy`: ``(logits [N, K], targets [N, K])``."""

    def __init__(
        self, reduction: Reduction = "mean", pos_weight: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        _check_reduction(reduction)
        self.reduction = reduction
        # A buffer follows the module across devices and into checkpoints.
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return binary_cross_entropy(logits, targets, self.reduction, self.pos_weight)


class AsymmetricLoss(nn.Module):
    """Module form of :func:`asymmetric_loss`: ``(logits [N, K], targets [N, K]) -> loss``."""

    def __init__(
        self,
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        focal_weight_grad: bool = False,
        reduction: Reduction = "sum",
    ) -> None:
        super().__init__()
        _check_reduction(reduction)
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.clip = clip
        self.eps = eps
        self.focal_weight_grad = focal_weight_grad
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return asymmetric_loss(
            logits,
            targets,
            gamma_neg=self.gamma_neg,
            gamma_pos=self.gamma_pos,
            clip=self.clip,
            eps=self.eps,
            focal_weight_grad=self.focal_weight_grad,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}, "
            f"eps={self.eps}, focal_weight_grad={self.focal_weight_grad}, "
            f"reduction={self.reduction!r}"
        )


class AsymmetricLossSingleLabel(nn.Module):
    """Module form of :func:`asymmetric_loss_single_label`: ``(logits [N, K], labels [N])``."""

    def __init__(
        self,
        gamma_pos: float = 0.0,
        gamma_neg: float = 4.0,
        label_smoothing: float = 0.1,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        _check_reduction(reduction)
        self.gamma_pos = gamma_pos
        self.gamma_neg = gamma_neg
        self.label_smoothing = label_smoothing
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return asymmetric_loss_single_label(
            logits,
            labels,
            gamma_pos=self.gamma_pos,
            gamma_neg=self.gamma_neg,
            label_smoothing=self.label_smoothing,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"gamma_pos={self.gamma_pos}, gamma_neg={self.gamma_neg}, "
            f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"
        )
