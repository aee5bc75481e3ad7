"""Classification metrics, built from torchmetrics ``Metric`` classes so DDP synchronises them.

Single-label (``single_label_metrics``), from scores ``[N, K]`` (logits or probabilities) and
integer labels ``[N]``:

- ``top1``, ``top5``: micro accuracy, the number papers report (``top5`` only when ``K > 5``).
- ``macro_accuracy``: mean of the per-class accuracies.
- ``per_class_accuracy``: ``[K]``; ``confusion_matrix``: ``[K, K]`` (rows are true classes).

Multi-label (``multilabel_metrics``), from probabilities ``[N, K]`` and {0, 1} targets ``[N, K]``:

- ``mAP``: macro average precision over the classes that have positives. Classes without
  positives have no defined AP; they are listed in
  :attr:`MultilabelMeanAveragePrecision.classes_without_positives` and a warning is logged,
  rather than being averaged in as 0 or 1.
- ``per_class_ap``: ``[K]``, NaN for classes without positives.
- ``f1_micro``/``f1_macro``, ``precision_*``, ``recall_*`` at ``threshold``. These are
  torchmetrics' own: their macro averages include every class, so a class with neither
  positives nor predictions counts as 0.

Pass probabilities to the multi-label metrics: torchmetrics applies a sigmoid only when a batch
has values outside [0, 1], so a batch of logits that happens to lie in [0, 1] would be read as
probabilities. Threshold tuning lives in :mod:`tresnet_ft.thresholds` and is re-exported here.
"""
from __future__ import annotations

import logging
from typing import Any, Literal

import torch
import torch.distributed as dist
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MultilabelF1Score,
    MultilabelPrecision,
    MultilabelRecall,
)
from torchmetrics.utilities.data import dim_zero_cat

from ..classifier.thresholds import Thresholds, tune_thresholds
from ..errors import InvalidValueError

logger = logging.getLogger(__name__)

_MAX_CLASSES_IN_WARNING = 20
_THRESHOLD_METRICS = {
    "f1": MultilabelF1Score,
    "precision": MultilabelPrecision,
    "recall": MultilabelRecall,
}


def _check_multilabel(
    scores: torch.Tensor, targets: torch.Tensor, num_classes: int | None = None
) -> None:
    expected_k = "K" if num_classes is None else str(num_classes)
    if scores.ndim != 2 or (num_classes is not None and scores.shape[1] != num_classes):
        raise InvalidValueError(
            f"Expected scores of shape [N, {expected_k}], but got {list(scores.shape)}."
        )
    if targets.shape != scores.shape:
        raise InvalidValueError(
            f"Expected targets of shape [N, {expected_k}] matching scores {list(scores.shape)}, "
            f"but got {list(targets.shape)}."
        )


def average_precision_per_class(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Average precision of each class; NaN where a class has no positive target.

    The non-interpolated AP of scikit-learn's ``average_precision_score``: the mean, over the
    positives, of the precision at the threshold that first admits them. Tied scores share one
    threshold. All classes are computed at once from one sort.

    Args:
        scores: ``[N, K]`` scores (any monotone scale: logits or probabilities).
        targets: ``[N, K]`` in {0, 1}.

    Returns:
        ``[K]`` float32.

    Example:
        >>> average_precision_per_class(torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.3]]),
        ...                             torch.tensor([[1, 0], [0, 0], [1, 0]]))
        tensor([0.8333,    nan])
    """
    _check_multilabel(scores, targets)
    descending, order = scores.detach().float().sort(dim=0, descending=True)
    hits = (targets.detach() > 0).gather(0, order).float()
    rank = torch.arange(1, len(hits) + 1, dtype=torch.float32, device=hits.device)[:, None]
    precision = hits.cumsum(0) / rank
    # Every member of a tie gets the precision at the tie's last position (the real threshold).
    positions = torch.arange(len(hits), device=hits.device)[:, None].expand_as(hits)
    is_tie_end = torch.ones_like(hits, dtype=torch.bool)
    is_tie_end[:-1] = descending[:-1] != descending[1:]
    tie_end = torch.where(is_tie_end, positions, len(hits)).flip(0).cummin(0).values.flip(0)
    num_positives = hits.sum(0)
    ap = (precision.gather(0, tie_end) * hits).sum(0) / num_positives.clamp(min=1)
    return torch.where(num_positives > 0, ap, torch.nan)


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mAP: mean of :func:`average_precision_per_class` over classes with positives.

    Logs a warning naming the classes left out; returns NaN if no class has a positive.

    Args:
        scores: ``[N, K]`` scores.
        targets: ``[N, K]`` in {0, 1}.

    Returns:
        scalar float32 tensor.
    """
    return _mean_over_classes_with_positives(average_precision_per_class(scores, targets))


def _mean_over_classes_with_positives(per_class_ap: torch.Tensor) -> torch.Tensor:
    missing = torch.nonzero(per_class_ap.isnan()).flatten().tolist()
    if missing and _is_rank_zero():
        shown = ", ".join(map(str, missing[:_MAX_CLASSES_IN_WARNING]))
        more = "" if len(missing) <= _MAX_CLASSES_IN_WARNING else ", ..."
        logger.warning(
            "mAP averages %d of %d classes: classes [%s%s] have no positive targets and are "
            "left out.",
            len(per_class_ap) - len(missing), len(per_class_ap), shown, more,
        )
    return per_class_ap.nanmean()


def _is_rank_zero() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class MultilabelMeanAveragePrecision(Metric):
    """mAP or per-class AP over all batches and processes (:func:`average_precision_per_class`).

    Keeps every score and target (states concatenated across processes on sync), because AP
    needs a global sort. Memory grows as ``N * K`` floats.

    Args:
        num_classes: ``K``.
        average: ``"macro"`` gives the mAP over classes with positives (a scalar); ``"none"``
            gives the ``[K]`` per-class AP with NaN for classes without positives.

    Attributes:
        classes_without_positives: indices of the classes without positives at the last
            ``compute()``.

    Example:
        >>> metric = MultilabelMeanAveragePrecision(num_classes=2)
        >>> metric.update(torch.tensor([[0.9, 0.1], [0.8, 0.2]]), torch.tensor([[1, 0], [0, 0]]))
        >>> metric.update(torch.tensor([[0.1, 0.3]]), torch.tensor([[1, 0]]))
        >>> metric.compute(), metric.classes_without_positives
        (tensor(0.8333), [1])
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self, num_classes: int, average: Literal["macro", "none"] = "macro", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise InvalidValueError(
                f"Expected num_classes to be a positive integer, but got {num_classes!r}."
            )
        if average not in ("macro", "none"):
            raise InvalidValueError(f"Expected average to be 'macro' or 'none', but got {average!r}.")
        self.num_classes = num_classes
        self.average = average
        self.classes_without_positives: list[int] = []
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: ``scores [N, K]`` and ``targets [N, K]`` in {0, 1}."""
        _check_multilabel(scores, targets, self.num_classes)
        self.scores.append(scores.detach().float())
        self.targets.append(targets.detach().float())

    def compute(self) -> torch.Tensor:
        scores, targets = dim_zero_cat(self.scores), dim_zero_cat(self.targets)
        per_class_ap = average_precision_per_class(scores, targets)
        self.classes_without_positives = torch.nonzero(per_class_ap.isnan()).flatten().tolist()
        if self.average == "none":
            return per_class_ap
        return _mean_over_classes_with_positives(per_class_ap)


def single_label_metrics(num_classes: int) -> MetricCollection:
    """Top-1/top-5 micro accuracy, macro and per-class accuracy, and the confusion matrix.

    Update with ``(scores [N, K], labels [N])``; scores may be logits or probabilities.
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise InvalidValueError(
            f"Expected num_classes to be an integer of at least 2, but got {num_classes!r}."
        )
    metrics: dict[str, Metric] = {
        "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
        "macro_accuracy": MulticlassAccuracy(num_classes, average="macro"),
        "per_class_accuracy": MulticlassAccuracy(num_classes, average="none"),
        "confusion_matrix": MulticlassConfusionMatrix(num_classes),
    }
    if num_classes > 5:  # with 5 classes or fewer top-5 is always 1
        metrics["top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics)


def multilabel_metrics(num_classes: int, threshold: float = 0.5) -> MetricCollection:
    """mAP, per-class AP, and micro/macro F1, precision and recall at ``threshold``.

    Update with ``(probabilities [N, K], targets [N, K])``.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise InvalidValueError(f"Expected num_classes to be a positive integer, but got {num_classes!r}.")
    if not 0.0 <= threshold <= 1.0:
        raise InvalidValueError(f"Expected threshold to be a probability in [0, 1], but got {threshold}.")
    threshold = float(threshold)
    metrics: dict[str, Metric] = {
        "mAP": MultilabelMeanAveragePrecision(num_classes, average="macro"),
        "per_class_ap": MultilabelMeanAveragePrecision(num_classes, average="none"),
    }
    for average in ("micro", "macro"):
        for name, metric_class in _THRESHOLD_METRICS.items():
            metrics[f"{name}_{average}"] = metric_class(num_classes, threshold, average=average)
    return MetricCollection(metrics)


__all__ = [
    "MultilabelMeanAveragePrecision",
    "Thresholds",
    "average_precision_per_class",
    "mean_average_precision",
    "multilabel_metrics",
    "single_label_metrics",
    "tune_thresholds",
]
