"""Single-label figures: the row-normalised confusion matrix, or its most frequent confusions."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from ...errors import InvalidValueError
from .checks import check_class_names


def top_confusions(confusion: torch.Tensor, n: int) -> list[tuple[int, int, int, float]]:
    """The ``n`` most frequent off-diagonal cells of a confusion matrix, most frequent first.

    Args:
        confusion: ``[K, K]`` counts, rows are true classes, columns predicted classes.
        n: how many to return (fewer when fewer cells are non-zero).

    Returns:
        ``(true_index, predicted_index, count, share_of_true_class)`` tuples.
    """
    _check_confusion(confusion)
    counts = confusion.detach().cpu().long()
    errors = counts.clone()
    errors.fill_diagonal_(0)
    flat = errors.flatten()
    n = min(n, int((flat > 0).sum()))
    # A stable sort lists equal counts in row-major order, so the figure is reproducible.
    values, indices = (part[:n] for part in flat.sort(descending=True, stable=True))
    row_totals = counts.sum(dim=1)
    k = counts.shape[0]
    return [
        (int(i) // k, int(i) % k, int(v), int(v) / int(row_totals[int(i) // k]))
        for v, i in zip(values, indices)
    ]


def plot_confusion_matrix(
    confusion: torch.Tensor, classes: Sequence[str], max_classes: int = 30, top_n: int = 25
) -> Figure:
    """Row-normalised confusion matrix, or the most frequent confusions when there are many classes.

    With ``K <= max_classes`` the figure shows the full matrix (each row divided by the number
    of images of that true class) with a colour bar. With more classes a matrix is unreadable,
    so it shows a bar chart of the ``top_n`` most frequent "true → predicted" confusions, each
    bar labelled with its count and its share of the true class.

    Args:
        confusion: ``[K, K]`` counts, rows are true classes, columns predicted classes
            (torchmetrics' ``MulticlassConfusionMatrix`` layout).
        classes: ``K`` class names.
        max_classes: the most classes drawn as a full matrix.
        top_n: the number of confusions shown when ``K > max_classes``.
    """
    _check_confusion(confusion)
    check_class_names(classes, confusion.shape[0], "confusion")
    counts = confusion.detach().cpu().double()
    total, correct = counts.sum().item(), counts.diagonal().sum().item()
    summary = f"{int(total)} images, accuracy {correct / max(total, 1):.3f}"
    if len(classes) <= max_classes:
        return _plot_full_confusion(counts, classes, summary)
    return _plot_top_confusions(confusion, classes, top_n, summary)


def _plot_full_confusion(counts: torch.Tensor, classes: Sequence[str], summary: str) -> Figure:
    k = len(classes)
    normalised = (counts / counts.sum(dim=1, keepdim=True).clamp(min=1)).numpy()
    side = max(5.0, 0.35 * k + 2.5)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of true class")
    ax.set_xticks(range(k), labels=list(classes), rotation=90, fontsize="small")
    ax.set_yticks(range(k), labels=list(classes), fontsize="small")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix (row-normalised)\n{summary}")
    if k <= 15:  # beyond that the numbers no longer fit in their cells
        for (row, col), share in np.ndenumerate(normalised):
            if share > 0:
                color = "white" if share > 0.5 else "black"
                ax.text(col, row, f"{share:.2f}", ha="center", va="center", fontsize=7, color=color)
    return fig


def _plot_top_confusions(
    confusion: torch.Tensor, classes: Sequence[str], top_n: int, summary: str
) -> Figure:
    confusions = top_confusions(confusion, top_n)
    fig = Figure(figsize=(9.0, max(3.0, 0.32 * len(confusions) + 1.5)), layout="constrained")
    ax = fig.subplots()
    ax.set_title(f"Top {len(confusions)} confusions of {len(classes)} classes\n{summary}")
    if not confusions:
        ax.text(0.5, 0.5, "no confusions", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    labels = [f"{classes[t]} → {classes[p]}" for t, p, _, _ in confusions]
    counts = [count for _, _, count, _ in confusions]
    bars = ax.barh(range(len(confusions)), counts, color="tab:red")
    ax.set_yticks(range(len(confusions)), labels=labels, fontsize="small")
    ax.invert_yaxis()  # most frequent on top
    ax.bar_label(bars, labels=[f"{c} ({s:.0%} of true)" for _, _, c, s in confusions],
                 padding=3, fontsize="small")
    ax.set_xlabel("images (true → predicted)")
    ax.margins(x=0.25)  # room for the bar labels
    return fig


def _check_confusion(confusion: torch.Tensor) -> None:
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise InvalidValueError(
            f"Expected a square confusion matrix [K, K], but got {list(confusion.shape)}."
        )
