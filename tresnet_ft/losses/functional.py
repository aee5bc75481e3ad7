"""Classification losses as functions (their ``nn.Module`` forms are in :mod:`.modules`).

Single-label: cross-entropy with label smoothing, soft-target cross-entropy (mixup/cutmix) and
the single-label asymmetric loss. Multi-label: BCE-with-logits and the asymmetric loss (ASL) of
Ridnik et al., 2021, "Asymmetric Loss For Multi-Label Classification".

Every loss is computed in float32 with autocast disabled, whatever the dtype of the logits, and
returns a float32 tensor: log/pow on fp16 or bf16 probabilities loses the small values that
carry the gradient. Validation checks shapes and dtypes only; checking label ranges would force
a device synchronisation on every step.
"""
from __future__ import annotations

import contextlib
from typing import Literal

import torch
from torch.nn import functional as F
from ..errors import InvalidValueError

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS = ("mean", "sum", "none")

# Smallest positive normal float32. Bases of the focusing weight are clamped to it so that
# gamma < 1 cannot meet a zero base, where pow's derivative is infinite.
_TINY = torch.finfo(torch.float32).tiny


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise InvalidValueError(f"Expected reduction to be one of {_REDUCTIONS}, but got {reduction!r}.")


def _check_logits(logits: torch.Tensor) -> None:
    if logits.ndim != 2 or not logits.is_floating_point():
        raise InvalidValueError(
            "Expected logits to be a floating-point tensor of shape [N, K], "
            f"but got {logits.dtype} of shape {list(logits.shape)}."
        )


def _check_labels(logits: torch.Tensor, labels: torch.Tensor) -> None:
    _check_logits(logits)
    if labels.shape != logits.shape[:1] or labels.is_floating_point() or labels.dtype == torch.bool:
        raise InvalidValueError(
            f"Expected integer labels of shape [{logits.shape[0]}] matching logits "
            f"{list(logits.shape)}, but got {labels.dtype} of shape {list(labels.shape)}."
        )


def _check_targets(logits: torch.Tensor, targets: torch.Tensor) -> None:
    _check_logits(logits)
    if targets.shape != logits.shape:
        raise InvalidValueError(
            f"Expected targets of shape [N, K] matching logits {list(logits.shape)}, "
            f"but got {list(targets.shape)}."
        )


def _float32(logits: torch.Tensor) -> contextlib.AbstractContextManager:
    """Disable autocast for the device of ``logits`` so the loss math stays in float32."""
    return torch.autocast(device_type=logits.device.type, enabled=False)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    return loss


def _focusing_weight(base: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``base ** gamma`` elementwise, finite in value and gradient for every base in [0, 1]."""
    return base.clamp(min=_TINY).pow(gamma)


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Softmax cross-entropy with optional label smoothing.

    Args:
        logits: ``[N, K]`` unnormalised scores.
        labels: ``[N]`` integer class indices in ``[0, K)``.
        label_smoothing: mass moved from the true class to a uniform distribution over all ``K``.
        reduction: ``"mean"`` (over the ``N`` samples), ``"sum"`` or ``"none"`` (``[N]``).

    Example:
        >>> cross_entropy(torch.tensor([[2.0, 0.0]]), torch.tensor([0])).round(decimals=4)
        tensor(0.1269)
    """
    _check_labels(logits, labels)
    _check_reduction(reduction)
    with _float32(logits):
        return F.cross_entropy(
            logits.float(), labels.long(), label_smoothing=label_smoothing, reduction=reduction
        )


def soft_target_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Cross-entropy against a target distribution per sample, as mixup/cutmix produce.

    Args:
        logits: ``[N, K]`` unnormalised scores.
        targets: ``[N, K]`` class probabilities (each row sums to 1).
        reduction: ``"mean"`` (over the ``N`` samples), ``"sum"`` or ``"none"`` (``[N]``).
    """
    _check_targets(logits, targets)
    _check_reduction(reduction)
    with _float32(logits):
        per_sample = -(targets.float() * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)
        return _reduce(per_sample, reduction)


def binary_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    reduction: Reduction = "mean",
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-label binary cross-entropy on logits.

    Args:
        logits: ``[N, K]`` unnormalised scores, one independent sigmoid per class.
        targets: ``[N, K]`` in ``[0, 1]`` (0/1 labels or smoothed ones).
        reduction: ``"mean"`` (over all ``N * K`` elements), ``"sum"`` or ``"none"`` (``[N, K]``).
        pos_weight: optional ``[K]`` weight of the positive term per class.
    """
    _check_targets(logits, targets)
    _check_reduction(reduction)
    with _float32(logits):
        return F.binary_cross_entropy_with_logits(
            logits.float(),
            targets.float(),
            reduction=reduction,
            pos_weight=None if pos_weight is None else pos_weight.float(),
        )


def asymmetric_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    focal_weight_grad: bool = False,
    reduction: Reduction = "sum",
) -> torch.Tensor:
    """Asymmetric loss (ASL) for multi-label classification.

    For probability ``p = sigmoid(logit)``, a positive contributes ``-(1 - p)**gamma_pos *
    log(p)`` and a negative ``-p_m**gamma_neg * log(1 - p_m)`` with the shifted probability
    ``p_m = max(p - clip, 0)``: easy negatives (``p < clip``) are discarded entirely.
    Probabilities inside the logs are clamped at ``eps``, so a single element contributes at most
    ``-log(eps)`` (18.4 for 1e-8) and stops passing gradient beyond that.

    Args:
        logits: ``[N, K]`` unnormalised scores.
        targets: ``[N, K]`` in ``[0, 1]``.
        gamma_neg: focusing exponent of the negatives.
        gamma_pos: focusing exponent of the positives.
        clip: probability margin for the negatives (0 disables shifting).
        eps: lower clamp of the probabilities inside the logs.
        focal_weight_grad: let gradient flow through the focusing weight. The reference (and
            default) treats it as a constant.
        reduction: ``"sum"`` over all elements (the reference; its gradient grows with ``N * K``),
            ``"mean"`` = the sum divided by ``N * K`` (the number of elements, the same
            normalisation as :func:`binary_cross_entropy`), or ``"none"`` (``[N, K]``). With
            Adam/AdamW the choice hardly matters because those optimisers are invariant to a
            constant scale of the loss; with SGD the learning rate must be ``N * K`` times larger
            for ``"mean"``.

    Example:
        >>> logits = torch.tensor([[3.0, -3.0]]); targets = torch.tensor([[1.0, 0.0]])
        >>> asymmetric_loss(logits, targets).round(decimals=4)
        tensor(0.0486)
    """
    _check_targets(logits, targets)
    _check_reduction(reduction)
    with _float32(logits):
        logits, targets = logits.float(), targets.float()
        prob_pos = torch.sigmoid(logits)
        prob_neg = 1 - prob_pos
        if clip > 0:
            prob_neg = (prob_neg + clip).clamp(max=1)
        log_likelihood = targets * torch.log(prob_pos.clamp(min=eps)) + (1 - targets) * torch.log(
            prob_neg.clamp(min=eps)
        )
        if gamma_neg > 0 or gamma_pos > 0:
            weight_grad = contextlib.nullcontext() if focal_weight_grad else torch.no_grad()
            with weight_grad:
                prob_of_target = prob_pos * targets + prob_neg * (1 - targets)
                gamma = gamma_pos * targets + gamma_neg * (1 - targets)
                weight = _focusing_weight(1 - prob_of_target, gamma)
            log_likelihood = log_likelihood * weight
        return _reduce(-log_likelihood, reduction)


def asymmetric_loss_single_label(logits: torch.Tensor, labels: torch.Tensor, gamma_pos: float = 0.0,
                                 gamma_neg: float = 4.0, label_smoothing: float = 0.1,
                                 reduction: Reduction = "mean") -> torch.Tensor:
    """Asymmetric focusing applied to softmax cross-entropy, with label smoothing.

    Each log-probability is weighted by ``(1 - p)**gamma_pos`` for the true class and
    ``p**gamma_neg`` for the others, then multiplied by the smoothed one-hot target
    ``(1 - label_smoothing) * onehot + label_smoothing / K``. As in the reference, gradient flows
    through the weights. With both gammas 0 this is the label-smoothed cross-entropy.

    Args:
        logits: ``[N, K]`` unnormalised scores.
        labels: ``[N]`` integer class indices in ``[0, K)``.
        gamma_pos: focusing exponent of the true class.
        gamma_neg: focusing exponent of the other classes.
        label_smoothing: mass moved from the true class to a uniform distribution over all ``K``.
        reduction: ``"mean"`` (over the ``N`` samples), ``"sum"`` or ``"none"`` (``[N]``).
    """
    _check_labels(logits, labels)
    _check_reduction(reduction)
    with _float32(logits):
        log_probs = F.log_softmax(logits.float(), dim=-1)
        num_classes = log_probs.shape[-1]
        one_hot = F.one_hot(labels.long(), num_classes).to(log_probs.dtype)
        probs = log_probs.exp()
        base = one_hot * (1 - probs) + (1 - one_hot) * probs
        weight = _focusing_weight(base, gamma_pos * one_hot + gamma_neg * (1 - one_hot))
        smoothed = one_hot * (1 - label_smoothing) + label_smoothing / num_classes
        per_sample = -(smoothed * weight * log_probs).sum(dim=-1)
        return _reduce(per_sample, reduction)
