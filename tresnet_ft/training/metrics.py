"""Classification metrics as plain functions: the one implementation behind every logged value.

Each metric is split, torchmetrics-style, into an *update* step that turns one batch into counts
(which add up over batches and over processes) and a *reduce* step that turns summed counts into
scores. :class:`~tresnet_ft.training.evaluation.EvaluationAccumulator` keeps the counts of one
evaluation pass and synchronises them once; nothing here knows about processes.

Single-label, from probabilities (or logits) ``[N, K]`` and integer labels ``[N]``:

- update: :func:`confusion_counts` (``[K, K]``, rows are true classes) and :func:`top_k_hits`;
- reduce: :func:`single_label_scores`: ``top1`` (micro accuracy, the number papers report),
  ``top5`` (given hits; only meaningful when ``K > 5``), ``macro_accuracy`` (torchmetrics' rule: a
  class neither present nor predicted is left out) and ``per_class_accuracy``.

Multi-label, from probabilities and {0, 1} targets ``[N, K]``:

- :func:`threshold_counts` (true positives, false positives, false negatives per class at a
  threshold) reduced by :func:`threshold_scores` to F1, precision and recall, micro and macro.
  Macro averages include every class, so a class with neither positives nor predictions counts as
  0 (torchmetrics' multi-label rule).
- :func:`average_precision_per_class`: needs a global sort, so it takes every score, or a
  histogram of them through ``weights`` (:func:`score_histogram`, :func:`histogram_table`);
  :func:`mean_over_classes_with_positives` gives the mAP, leaving out (and naming in a warning)
  the classes without positives rather than counting them as 0 or 1.

Update steps never read device data on the host (no ``.item()``, no data-dependent shapes), so
they cost no GPU synchronisation. Threshold tuning lives in :mod:`tresnet_ft.classifier.thresholds`.
"""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from ..classifier.average_precision import average_precision_per_class
from ..classifier.average_precision import check_multilabel_shapes as _check_multilabel

logger = logging.getLogger(__name__)

_MAX_CLASSES_IN_WARNING = 20
# Scores are binned in logit space, where a confident model's scores spread out (in probability
# they pile up next to 0 and 1). float32 probabilities round to 1 beyond a logit of ~16.6, so
# nothing is lost by sending scores further out to the end bins.
LOGIT_BOUND = 16.0


# -- single-label -------------------------------------------------------------------------------


def confusion_counts(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Counts of (true class, predicted class) pairs, the prediction being the highest score.

    ``index_add_`` rather than ``bincount``: on a GPU ``bincount`` reads the largest label back to
    the host to size its output, a synchronisation per batch.

    Args:
        scores: ``[N, K]`` probabilities or logits.
        labels: ``[N]`` integer classes in ``[0, K)``.

    Returns:
        ``[K, K]`` int64, rows true classes, columns predictions.

    Example:
        >>> confusion_counts(torch.tensor([[0.9, 0.1], [0.6, 0.4]]), torch.tensor([0, 1])).tolist()
        [[1, 0], [1, 0]]
    """
    k = scores.shape[1]
    pairs = labels.long() * k + scores.argmax(dim=1)
    counts = torch.zeros(k * k, dtype=torch.int64, device=scores.device)
    return counts.index_add_(0, pairs, torch.ones_like(pairs)).view(k, k)


def top_k_hits(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """How many of the ``[N]`` labels are among the ``k`` highest of their ``[N, K]`` scores (0-d int64)."""
    return (scores.topk(k, dim=1).indices == labels.long()[:, None]).any(dim=1).sum()


def single_label_scores(
    confusion: torch.Tensor, top5_hits: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Accuracies from summed counts.

    Args:
        confusion: ``[K, K]`` counts (:func:`confusion_counts` summed over batches).
        top5_hits: :func:`top_k_hits` with ``k=5`` summed; None leaves ``top5`` out.

    Returns:
        ``top1``, ``macro_accuracy`` (0-d float32), ``per_class_accuracy`` (``[K]``, 0 for a class
        without images) and, given hits, ``top5``. All 0 when there are no images.
    """
    counts = confusion.double()
    correct, support, predicted = counts.diagonal(), counts.sum(dim=1), counts.sum(dim=0)
    total = counts.sum()
    per_class = _safe_divide(correct, support)
    counted = ((support + predicted) > 0).double()  # tp + fp + fn > 0, as torchmetrics counts them
    scores = {
        "top1": _safe_divide(correct.sum(), total),
        "macro_accuracy": _safe_divide((per_class * counted).sum(), counted.sum()),
        "per_class_accuracy": per_class,
    }
    if top5_hits is not None:
        scores["top5"] = _safe_divide(top5_hits.double(), total)
    return {name: value.float() for name, value in scores.items()}


# -- multi-label at a threshold -----------------------------------------------------------------


def threshold_counts(probs: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """True positives, false positives and false negatives per class, predicting ``probs > threshold``.

    Args:
        probs: ``[N, K]`` probabilities.
        targets: ``[N, K]`` in {0, 1}.

    Returns:
        ``[3, K]`` int64: rows tp, fp, fn.
    """
    _check_multilabel(probs, targets)
    predicted, actual = probs > threshold, targets > 0.5
    return torch.stack([(predicted & actual).sum(0), (predicted & ~actual).sum(0),
                        (~predicted & actual).sum(0)]).long()


def threshold_scores(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """``f1_micro``, ``f1_macro``, ``precision_*``, ``recall_*`` (0-d float32) from ``[3, K]`` counts.

    A ratio with a zero denominator is 0 (scikit-learn's ``zero_division=0``).
    """
    tp, fp, fn = counts.double()
    scores = {}
    for average, (t, p, n) in (("micro", (tp.sum(), fp.sum(), fn.sum())), ("macro", (tp, fp, fn))):
        values = {"f1": _safe_divide(2 * t, 2 * t + p + n), "precision": _safe_divide(t, t + p),
                  "recall": _safe_divide(t, t + n)}
        for name, value in values.items():
            scores[f"{name}_{average}"] = value.mean().float()
    return scores


# -- average precision --------------------------------------------------------------------------


def mean_over_classes_with_positives(per_class_ap: torch.Tensor) -> torch.Tensor:
    """mAP: the mean of ``[K]`` per-class AP over the classes that have positives (not NaN).

    Logs a warning (global rank 0) naming the classes left out; NaN if no class has a positive.
    """
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


def score_histogram(logits: torch.Tensor, targets: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Per-class histograms of ``[N, K]`` logits, negatives and positives apart: ``[2, K, num_bins]`` int32.

    The bins split ``[-LOGIT_BOUND, LOGIT_BOUND]`` evenly (scores beyond go to the end bins; NaN
    to the middle one). AP from these counts (:func:`histogram_table`) is the exact AP of scores
    rounded to their bin, so it differs from the exact one only where a positive and a negative
    of one class share a bin, ``2 * LOGIT_BOUND / num_bins`` wide in logit.
    """
    _check_multilabel(logits, targets)
    k = logits.shape[1]
    scaled = (logits.float().nan_to_num(nan=0.0).clamp(-LOGIT_BOUND, LOGIT_BOUND) + LOGIT_BOUND)
    bins = (scaled * (num_bins / (2 * LOGIT_BOUND))).long().clamp(max=num_bins - 1)
    classes = torch.arange(k, device=logits.device) * num_bins
    index = (targets > 0.5).long() * (k * num_bins) + classes + bins
    counts = torch.zeros(2 * k * num_bins, dtype=torch.int32, device=logits.device)
    index = index.flatten()
    return counts.index_add_(0, index, torch.ones_like(index, dtype=torch.int32)).view(2, k, num_bins)


def histogram_table(
    histogram: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`score_histogram` counts as weighted rows for :func:`average_precision_per_class`
    and :func:`~tresnet_ft.classifier.thresholds.tune_thresholds`.

    Returns:
        ``(scores, targets, weights)``, each ``[2B, K]``: every bin's centre as a probability,
        once for the negatives (target 0) and once for the positives (target 1), weighted by
        their counts (float64).
    """
    _, k, num_bins = histogram.shape
    width = 2 * LOGIT_BOUND / num_bins
    centres = torch.arange(num_bins, dtype=torch.float64) * width + (width / 2 - LOGIT_BOUND)
    scores = centres.sigmoid().float()[:, None].expand(num_bins, k).repeat(2, 1)
    targets = torch.zeros(2 * num_bins, k, dtype=torch.uint8)
    targets[num_bins:] = 1
    weights = histogram.cpu().double().transpose(1, 2).reshape(2 * num_bins, k)
    return scores, targets, weights


# -- internals ----------------------------------------------------------------------------------


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1e-300), 0.0)


def _is_rank_zero() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


__all__ = [
    "LOGIT_BOUND",
    "average_precision_per_class",
    "confusion_counts",
    "histogram_table",
    "mean_over_classes_with_positives",
    "score_histogram",
    "single_label_scores",
    "threshold_counts",
    "threshold_scores",
    "top_k_hits",
]
