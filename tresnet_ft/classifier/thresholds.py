"""Decision thresholds for multi-label prediction, tuned on validation scores to maximise F1.

A class is predicted when its score is strictly greater than its threshold, the rule of
:func:`tresnet_ft.training.metrics.threshold_counts` (and torchmetrics' ``preds > threshold``), so
F1 measured there at a tuned threshold equals the F1 reported here.

The objective is macro F1 over the classes that have positives in the tuning data: classes
without positives have no F1 to gain, so they are left out of the average (as they are from mAP)
and use the global threshold.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from ..errors import InvalidValueError

_NUM_GRID_CANDIDATES = 1000


@dataclass
class Thresholds:
    """Tuned thresholds plus the validation F1 they reach; plain floats and a tensor.

    Attributes:
        global_threshold: the one threshold for all classes that maximises macro F1.
        per_class: ``[K]`` thresholds, each maximising its own class's F1.
        default_threshold: the threshold ``f1_before`` was measured at.
        f1_before: macro F1 at ``default_threshold``.
        f1_global: macro F1 at ``global_threshold``.
        f1_after: macro F1 at the ``per_class`` thresholds.
    """

    global_threshold: float
    per_class: torch.Tensor
    default_threshold: float
    f1_before: float
    f1_global: float
    f1_after: float

    def to_dict(self) -> dict[str, Any]:
        """Plain floats and a tensor, loadable with ``torch.load(..., weights_only=True)``."""
        return {
            "global_threshold": self.global_threshold,
            "per_class": self.per_class.detach().cpu().clone(),
            "default_threshold": self.default_threshold,
            "f1_before": self.f1_before,
            "f1_global": self.f1_global,
            "f1_after": self.f1_after,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Thresholds:
        """Inverse of :meth:`to_dict`."""
        return cls(**state)


def tune_thresholds(
    scores: torch.Tensor, targets: torch.Tensor, default_threshold: float = 0.5,
    weights: torch.Tensor | None = None,
) -> Thresholds:
    """Choose one global threshold and per-class thresholds that maximise F1 on validation data.

    Per class, every cut between two distinct scores is tried (exact optimum, in one sort);
    the chosen threshold lies halfway between the lowest score predicted positive and the next
    lower score. The global threshold is the best of a grid of quantiles of all scores, the
    default threshold and the per-class thresholds, scored by macro F1. On the tuning data
    ``f1_after >= f1_global >= f1_before`` always holds.

    Args:
        scores: ``[N, K]`` probabilities (or any monotone scores, then pick ``default_threshold``
            to match).
        targets: ``[N, K]`` in {0, 1}.
        default_threshold: the threshold ``f1_before`` is reported at.
        weights: ``[N, K]`` non-negative counts, how many samples each row stands for (the bins
            of :func:`tresnet_ft.training.metrics.histogram_table`: thresholds then fall between
            bin centres); None counts every row once.

    Raises:
        ValueError: shapes differ, or no class has a positive target.

    Example:
        >>> scores = torch.tensor([[0.9, 0.3], [0.4, 0.2], [0.1, 0.1]])
        >>> targets = torch.tensor([[1, 1], [1, 0], [0, 0]])
        >>> tuned = tune_thresholds(scores, targets)
        >>> tuned.per_class, round(tuned.f1_before, 4), tuned.f1_after
        (tensor([0.2500, 0.2500]), 0.3333, 1.0)
    """
    _check_inputs(scores, targets, weights)
    scores, positives = scores.detach().float(), targets.detach() > 0
    # float64: histogram counts can pass 2**24, where float32 stops counting exactly.
    counts = torch.ones_like(scores, dtype=torch.float64) if weights is None else weights.detach().double()
    has_positives = (positives & (counts > 0)).any(dim=0)
    if not has_positives.any():
        raise InvalidValueError("Expected at least one class with a positive target, but got none.")
    sorted_counts = _SortedCounts(scores, positives, counts)

    best_per_class = _best_threshold_per_class(scores, positives, counts)
    candidates = torch.cat(
        [_quantile_grid(scores, counts), best_per_class, torch.tensor([default_threshold])]
    )
    macro_f1 = _macro_f1(sorted_counts.f1(candidates.expand(scores.shape[1], -1)), has_positives)
    best = int(macro_f1.argmax())
    global_threshold = candidates[best].item()

    per_class = torch.where(has_positives, best_per_class, torch.tensor(global_threshold))
    default = torch.full((scores.shape[1], 1), float(default_threshold))
    return Thresholds(
        global_threshold=global_threshold,
        per_class=per_class,
        default_threshold=float(default_threshold),
        f1_before=_macro_f1(sorted_counts.f1(default), has_positives).item(),
        f1_global=macro_f1[best].item(),
        f1_after=_macro_f1(sorted_counts.f1(per_class[:, None]), has_positives).item(),
    )


def _check_inputs(scores: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> None:
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise InvalidValueError(
            f"Expected scores of shape [N, K] with N > 0, but got {list(scores.shape)}."
        )
    for name, tensor in (("targets", targets), ("weights", weights)):
        if tensor is not None and tensor.shape != scores.shape:
            raise InvalidValueError(
                f"Expected {name} of shape [N, K] matching scores {list(scores.shape)}, "
                f"but got {list(tensor.shape)}."
            )


class _SortedCounts:
    """Per-class scores sorted once, so F1 at any thresholds costs one batched searchsorted."""

    def __init__(self, scores: torch.Tensor, positives: torch.Tensor, counts: torch.Tensor) -> None:
        ascending, order = scores.t().sort(dim=1)
        self.ascending = ascending.contiguous()  # [K, N]
        rows = counts.t().gather(1, order)
        hits = positives.t().gather(1, order) * rows
        zero = rows.new_zeros(len(rows), 1)
        # positives_below[k, i] / samples_below[k, i]: among the i lowest scores of class k.
        self.positives_below = torch.cat([zero, hits.cumsum(1)], dim=1)
        self.samples_below = torch.cat([zero, rows.cumsum(1)], dim=1)

    def f1(self, thresholds: torch.Tensor) -> torch.Tensor:
        """F1 ``[K, C]`` of each class at thresholds ``[K, C]`` (positive means score > t)."""
        below = torch.searchsorted(self.ascending, thresholds.contiguous(), right=True)
        total_positives = self.positives_below[:, -1:]
        true_positives = total_positives - self.positives_below.gather(1, below)
        predicted = self.samples_below[:, -1:] - self.samples_below.gather(1, below)
        return (2 * true_positives / (predicted + total_positives).clamp(min=1)).float()


def _macro_f1(f1: torch.Tensor, has_positives: torch.Tensor) -> torch.Tensor:
    """Average ``[K, C]`` F1 over the classes that have positives -> ``[C]``."""
    return f1[has_positives].mean(dim=0)


def _best_threshold_per_class(
    scores: torch.Tensor, positives: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """Exact F1-optimal threshold ``[K]`` per class over all cuts between distinct scores."""
    descending, order = scores.sort(dim=0, descending=True)
    rows = counts.gather(0, order)
    true_positives = (positives.gather(0, order) * rows).cumsum(0)
    predicted = rows.cumsum(0)
    f1 = 2 * true_positives / (predicted + true_positives[-1:]).clamp(min=1)
    # A threshold cannot split tied scores, so only the last position of a tie is a valid cut.
    is_cut = torch.ones_like(descending, dtype=torch.bool)
    is_cut[:-1] = descending[:-1] != descending[1:]
    best = f1.masked_fill(~is_cut, -1.0).argmax(dim=0, keepdim=True)  # first: fewest positives

    lowest_positive = descending.gather(0, best)
    next_lower = descending.gather(0, (best + 1).clamp(max=len(scores) - 1))
    just_below = torch.nextafter(lowest_positive, torch.tensor(-torch.inf))
    next_lower = torch.where(best + 1 < len(scores), next_lower, just_below)
    halfway = next_lower + (lowest_positive - next_lower) / 2
    # Rounding can land halfway on lowest_positive itself, which would then be predicted negative.
    return torch.where(halfway < lowest_positive, halfway, next_lower).squeeze(0)


def _quantile_grid(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Up to ``_NUM_GRID_CANDIDATES`` evenly spaced order statistics of all scores (``counts`` times each)."""
    pooled, order = scores.flatten().sort()
    samples_up_to = counts.flatten()[order].cumsum(0)
    ranks = torch.linspace(0, samples_up_to[-1].item() - 1, _NUM_GRID_CANDIDATES, dtype=torch.float64).round()
    positions = torch.searchsorted(samples_up_to, ranks, right=True).clamp(max=len(pooled) - 1)
    return pooled[positions].unique()
