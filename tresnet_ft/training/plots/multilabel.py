"""Multi-label figures: per-class average precision and precision-recall curves."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from ...errors import InvalidValueError
from ..metrics import average_precision_per_class
from .checks import check_class_names

_MAX_CURVE_POINTS = 2000  # a PR curve over millions of scores is drawn from this many points


def plot_per_class_ap(ap: torch.Tensor, classes: Sequence[str], max_classes: int = 40) -> Figure:
    """Sorted bar chart of per-class average precision.

    Classes whose AP is NaN (no positive validation image) are left out and counted in the title.
    With more than ``max_classes`` valid classes, two panels show the ``max_classes // 2`` worst
    and best classes. A dashed line marks the mAP over the valid classes.

    Args:
        ap: ``[K]`` per-class AP, NaN for classes without positives
            (:func:`tresnet_ft.training.metrics.average_precision_per_class`).
        classes: ``K`` class names.
        max_classes: the most bars drawn.
    """
    if ap.ndim != 1:
        raise InvalidValueError(f"Expected per-class AP of shape [K], but got {list(ap.shape)}.")
    check_class_names(classes, ap.shape[0], "AP")
    values = ap.detach().cpu().double()
    valid = torch.nonzero(~values.isnan()).flatten()
    order = valid[values[valid].argsort()].tolist()  # worst first
    title = _per_class_ap_title(values, len(order))
    if len(order) <= max_classes:
        panels = {title: order}
    else:
        half = max(max_classes // 2, 1)
        panels = {f"{title}\nworst {half}": order[:half], f"best {half}": order[-half:]}
    tallest = max(len(indices) for indices in panels.values())
    fig = Figure(figsize=(6.0 * len(panels), max(3.0, 0.28 * tallest + 1.5)), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel_title, indices) in zip(axes, panels.items()):
        _draw_ap_bars(ax, values, classes, indices, panel_title)
    return fig


def _per_class_ap_title(values: torch.Tensor, num_valid: int) -> str:
    missing = len(values) - num_valid
    mean = values.nanmean().item() if num_valid else float("nan")
    text = f"Per-class AP (mAP {mean:.3f} over {num_valid} classes"
    return text + (f"; {missing} without positives excluded)" if missing else ")")


def _draw_ap_bars(
    ax, values: torch.Tensor, classes: Sequence[str], indices: list[int], title: str
) -> None:
    ax.set_title(title)
    if not indices:
        ax.text(0.5, 0.5, "no class has a positive", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    heights = [values[i].item() for i in indices]
    bars = ax.barh(range(len(indices)), heights, color="tab:blue")
    ax.set_yticks(range(len(indices)), labels=[classes[i] for i in indices], fontsize="small")
    ax.bar_label(bars, fmt="%.2f", padding=2, fontsize="x-small")
    ax.axvline(values.nanmean().item(), color="black", linestyle="--", linewidth=1, label="mAP")
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("average precision")
    ax.legend(fontsize="small", loc="lower right")


def precision_recall_points(
    scores: torch.Tensor, targets: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score threshold (highest threshold first).

    Args:
        scores: ``[N]`` scores.
        targets: ``[N]`` in {0, 1}; at least one positive.

    Returns:
        ``(precision, recall)``, each ``[T]`` float64 for the ``T`` distinct scores, recall
        non-decreasing and ending at 1.
    """
    if scores.ndim != 1 or targets.shape != scores.shape:
        raise InvalidValueError(
            f"Expected scores [N] and targets [N], but got {list(scores.shape)} and "
            f"{list(targets.shape)}."
        )
    descending, order = scores.detach().double().sort(descending=True)
    hits = (targets.detach() > 0)[order].double()
    if hits.sum() == 0:
        raise InvalidValueError("Expected at least one positive target, but got none.")
    true_positives = hits.cumsum(0)
    # A threshold cannot separate tied scores, so only the last member of a tie is a point.
    is_tie_end = torch.ones_like(descending, dtype=torch.bool)
    is_tie_end[:-1] = descending[:-1] != descending[1:]
    positions = torch.nonzero(is_tie_end).flatten()
    precision = true_positives[positions] / (positions + 1).double()
    recall = true_positives[positions] / true_positives[-1]
    return precision.numpy(), recall.numpy()


def plot_precision_recall(
    scores: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], max_curves: int = 10
) -> Figure:
    """Micro-averaged precision-recall curve plus the curves of the most frequent classes.

    The micro-average pools every (image, class) pair. The per-class curves are the
    ``max_curves`` classes with the most positives; legends give each curve's AP.

    Args:
        scores: ``[N, K]`` probabilities (or any monotone scores).
        targets: ``[N, K]`` in {0, 1}.
        classes: ``K`` class names.
        max_curves: the most per-class curves drawn.
    """
    if scores.ndim != 2 or targets.shape != scores.shape:
        raise InvalidValueError(
            f"Expected scores [N, K] and targets of the same shape, but got "
            f"{list(scores.shape)} and {list(targets.shape)}."
        )
    check_class_names(classes, scores.shape[1], "scores")
    scores, targets = scores.detach().cpu().float(), targets.detach().cpu()
    fig = Figure(figsize=(7.0, 6.0), layout="constrained")
    ax = fig.subplots()
    positives = (targets > 0).sum(dim=0)
    if positives.sum() == 0:
        ax.text(0.5, 0.5, "no positive targets", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("Precision-recall")
        return fig
    micro_ap = average_precision_per_class(scores.reshape(-1, 1), targets.reshape(-1, 1))[0]
    _draw_pr_curve(ax, scores.flatten(), targets.flatten(),
                   f"micro-average (AP {micro_ap:.3f})", color="black", linewidth=2.5)
    by_frequency = positives.argsort(descending=True, stable=True).tolist()
    frequent = [i for i in by_frequency if positives[i] > 0]
    ap = average_precision_per_class(scores, targets)
    for i in frequent[:max_curves]:
        label = f"{classes[i]} (AP {ap[i]:.3f}, {int(positives[i])} pos.)"
        _draw_pr_curve(ax, scores[:, i], targets[:, i], label, linewidth=1.2)
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    shown = min(max_curves, len(frequent))
    ax.set_title(f"Precision-recall: micro-average and the {shown} most frequent classes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", loc="lower left")
    return fig


def _draw_pr_curve(ax, scores: torch.Tensor, targets: torch.Tensor, label: str, **style) -> None:
    precision, recall = precision_recall_points(scores, targets)
    if len(recall) > _MAX_CURVE_POINTS:  # keeps the shape; millions of points only slow drawing
        keep = np.unique(np.linspace(0, len(recall) - 1, _MAX_CURVE_POINTS).round().astype(int))
        precision, recall = precision[keep], recall[keep]
    ax.step(recall, precision, where="post", label=label, **style)
