"""Average precision per class: the one implementation behind the training mAP, the plots and the
int8 accuracy gate (plain PyTorch, so inference may use it as well as training).
"""
from __future__ import annotations

import torch

from ..errors import InvalidValueError


def average_precision_per_class(
    scores: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Average precision of each class; NaN where a class has no positive target.

    The non-interpolated AP of scikit-learn's ``average_precision_score``: the mean, over the
    positives, of the precision at the threshold that first admits them. Tied scores share one
    threshold. All classes are computed at once from one sort.

    Args:
        scores: ``[N, K]`` scores (any monotone scale: logits or probabilities).
        targets: ``[N, K]`` in {0, 1}.
        weights: ``[N, K]`` non-negative counts: how many samples each row stands for (a
            histogram's bins, :func:`tresnet_ft.training.metrics.histogram_table`); None counts every row once.

    Returns:
        ``[K]`` float32.

    Example:
        >>> average_precision_per_class(torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.3]]),
        ...                             torch.tensor([[1, 0], [0, 0], [1, 0]]))
        tensor([0.8333,    nan])
    """
    check_multilabel_shapes(scores, targets, weights)
    descending, order = scores.detach().float().sort(dim=0, descending=True)
    # Counts above 2**24 are not exact in float32: weighted (histogram) counts use float64.
    dtype = torch.float32 if weights is None else torch.float64
    rows = torch.ones_like(descending, dtype=dtype) if weights is None else weights.detach().to(dtype).gather(0, order)
    hits = (targets.detach() > 0).gather(0, order).to(dtype) * rows
    seen = rows.cumsum(0)
    precision = hits.cumsum(0) / seen.clamp(min=torch.finfo(dtype).tiny)  # 0 / tiny where nothing is seen yet
    # Every member of a tie gets the precision at the tie's last position (the real threshold).
    positions = torch.arange(len(hits), device=hits.device)[:, None].expand_as(hits)
    is_tie_end = torch.ones_like(hits, dtype=torch.bool)
    is_tie_end[:-1] = descending[:-1] != descending[1:]
    tie_end = torch.where(is_tie_end, positions, len(hits)).flip(0).cummin(0).values.flip(0)
    num_positives = hits.sum(0)
    ap = (precision.gather(0, tie_end) * hits).sum(0) / num_positives.clamp(min=1)
    return torch.where(num_positives > 0, ap, torch.nan).float()


def check_multilabel_shapes(
    scores: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
) -> None:
    """Raise an :class:`~tresnet_ft.errors.InvalidValueError` unless scores, targets (and weights) are ``[N, K]``."""
    if scores.ndim != 2:
        raise InvalidValueError(f"Expected scores of shape [N, K], but got {list(scores.shape)}.")
    if targets.shape != scores.shape:
        raise InvalidValueError(
            f"Expected targets of shape [N, K] matching scores {list(scores.shape)}, "
            f"but got {list(targets.shape)}."
        )
    if weights is not None and weights.shape != scores.shape:
        raise InvalidValueError(
            f"Expected weights of shape [N, K] matching scores {list(scores.shape)}, "
            f"but got {list(weights.shape)}."
        )
