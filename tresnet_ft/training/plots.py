"""Diagnostic figures for a fine-tuning run: curves, confusions, per-class AP, PR, image grids.

Plain matplotlib, no Lightning: every function takes tensors or plain Python data and returns a
:class:`matplotlib.figure.Figure`. Figures are built with the object-oriented API and rendered by
the Agg canvas, never through ``pyplot``, so nothing here changes the global backend, opens a
window, or keeps figures alive in pyplot's registry (a notebook can still display the returned
figure). :func:`save_figure` writes a PNG; :func:`figure_to_array` gives the RGB pixels that
loggers such as Weights & Biases take.

Example:
    >>> history = [{"epoch": 0, "train/loss": 2.1, "val/loss": 1.8, "val/top1": 0.41},
    ...            {"epoch": 1, "train/loss": 1.2, "val/loss": 1.1, "val/top1": 0.66}]
    >>> fig = plot_training_curves(history)
    >>> [ax.get_title() for ax in fig.axes]
    ['Loss', 'Metrics']
"""
from __future__ import annotations

import logging
import math
import textwrap
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from .metrics import average_precision_per_class
from ..errors import InvalidValueError

logger = logging.getLogger(__name__)

_AXIS_KEYS = ("epoch", "step")
_MAX_CURVE_POINTS = 2000  # a PR curve over millions of scores is drawn from this many points
_CAPTION_WIDTH = 28  # characters per caption line under a grid image
_CORRECT_COLOR, _WRONG_COLOR = "tab:green", "tab:red"
_MONITOR_COLOR = "tab:green"  # the metric on the loss panel's second axis


# -- output -------------------------------------------------------------------------------------


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parent folders are created) and return the path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InvalidValueError(f"Expected a path ending in .png, but got {str(path)!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # attaches the Agg canvas, whatever backend pyplot uses
    fig.savefig(path, dpi=dpi, format="png")
    return path


def figure_to_array(fig: Figure, dpi: int = 100) -> np.ndarray:
    """Render ``fig`` to RGB pixels: ``[H, W, 3]`` uint8."""
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# -- training curves ----------------------------------------------------------------------------


def plot_training_curves(
    history: Sequence[dict[str, float]],
    steps: Sequence[dict[str, float]] = (),
    monitor: str | None = None,
    max_metrics: int = 8,
) -> Figure:
    """Loss, metrics and learning rate: per-step lines where logged, per-epoch points otherwise.

    Panels (one left out when it has nothing to draw):

    - "Loss": the losses of ``steps`` as thin lines, those of ``history`` as points joined by a
      line, and ``monitor`` (when given and in ``history``) on a second y axis: the run's
      progress and the metric that picks its best checkpoint in one panel;
    - "Metrics": the other ``history`` keys (at most ``max_metrics``, ``val`` keys first);
    - "Learning rate": the learning rates of ``steps``, else those of ``history`` (log scale
      when all are positive).

    Keys containing ``loss`` are losses; ``lr``, ``lr-*``, ``lr/*`` and ``*/lr`` learning rates.
    Lightning's twins in ``history`` are skipped: ``*_step``, and ``*_epoch`` next to ``*``.
    Every ``history`` value is drawn as a marker, so a run with one validation still shows its
    point. The x axis is the step when
    ``steps`` is given (``history`` entries without a ``step`` are then left out); otherwise
    ``epoch`` when every entry has a distinct one, else ``step``, else the entry index.

    Args:
        history: one dict of floats per validation or epoch, e.g.
            ``{"epoch": 3, "step": 400, "train/loss": 0.4, "val/loss": 0.5, "val/top1": 0.9}``.
        steps: one dict per logged training step, e.g. rows of the CSV logger's
            ``metrics.csv``: ``{"step": 50, "train/loss_step": 0.7, "lr-AdamW": 1e-4}``; every
            loss and learning-rate key in them is drawn as a line.
        monitor: the ``history`` key drawn on the loss panel's second axis.
        max_metrics: the most lines in the "Metrics" panel.

    Returns:
        A figure with one axes per non-empty panel, plus the second axis of "Loss".
    """
    if len(history) == 0:
        raise InvalidValueError("Expected a non-empty history (one dict per epoch), but got none.")
    x_label, x = _curves_x_axis(history, with_steps=bool(steps))
    per_epoch = _group_history_keys(history, max_metrics)
    per_step = _group_step_keys(steps)
    if per_step["Learning rate"]:  # the per-step curve already holds the per-epoch values
        per_epoch["Learning rate"] = []
    titles = [t for t in ("Loss", "Metrics", "Learning rate") if per_epoch[t] or per_step.get(t)]
    if not titles:
        keys = sorted({key for entry in history for key in entry})
        raise InvalidValueError(
            f"Expected history entries with a metric besides epoch/step, but got keys {keys}."
        )
    twin = monitor if "Loss" in titles and monitor in per_epoch["Metrics"] else None
    if twin is not None:
        per_epoch["Metrics"].remove(twin)
        titles = [t for t in titles if per_epoch[t] or per_step.get(t)]
    fig = Figure(figsize=(5.5 * len(titles), 4.0), layout="constrained")
    # One x range for all panels: a lone validation point lines up with the end of the loss curve.
    axes = fig.subplots(1, len(titles), squeeze=False, sharex=True)[0]
    for ax, title in zip(axes, titles):
        colors = _draw_step_lines(ax, steps, per_step.get(title, []))
        for key in per_epoch[title]:
            _draw_epoch_points(ax, x, history, key, color=colors.get(key))
        handles = _draw_monitor(ax, x, history, twin) if title == "Loss" and twin else []
        _finish_curves_axes(ax, title, x_label, handles, twin)
    return fig


def _curves_x_axis(
    history: Sequence[dict[str, float]], with_steps: bool
) -> tuple[str, list[float | None]]:
    if with_steps:
        return "step", [float(e["step"]) if _is_number(e.get("step")) else None for e in history]
    for key in _AXIS_KEYS:
        values = [entry.get(key) for entry in history]
        if all(_is_number(v) for v in values) and len(set(values)) == len(values):
            return key, [float(v) for v in values]
    return "entry", [float(i) for i in range(len(history))]


def _group_history_keys(
    history: Sequence[dict[str, float]], max_metrics: int
) -> dict[str, list[str]]:
    keys = sorted(
        {k for entry in history for k, v in entry.items() if _is_number(v)} - set(_AXIS_KEYS)
    )
    # Lightning's twins of a metric logged per step and per epoch: the per-epoch value is k itself.
    keys = [k for k in keys if not k.endswith("_step")
            and not (k.endswith("_epoch") and k.removesuffix("_epoch") in keys)]
    loss = [k for k in keys if "loss" in k.lower()]
    lr = [k for k in keys if is_learning_rate_key(k)]
    metrics = sorted(set(keys) - set(loss) - set(lr), key=lambda k: (not k.startswith("val"), k))
    if len(metrics) > max_metrics:
        logger.debug("Curves show %d of %d metrics: %s", max_metrics, len(metrics), metrics)
        metrics = metrics[:max_metrics]
    return {"Loss": loss, "Metrics": metrics, "Learning rate": lr}


def _group_step_keys(steps: Sequence[dict[str, float]]) -> dict[str, list[str]]:
    keys = sorted({k for row in steps for k, v in row.items() if _is_number(v)} - set(_AXIS_KEYS))
    return {"Loss": [k for k in keys if "loss" in k.lower()],
            "Learning rate": [k for k in keys if is_learning_rate_key(k)]}


def _draw_step_lines(ax, steps: Sequence[dict[str, float]], keys: list[str]) -> dict[str, str]:
    """Thin lines of per-step values; returns each line's colour under its per-epoch name."""
    colors: dict[str, str] = {}
    drawn: dict[tuple, str] = {}  # points -> the key whose line shows them
    lines: dict[str, Line2D] = {}
    shared: Counter[str] = Counter()
    for key in keys:
        points = tuple((row["step"], row[key]) for row in steps
                       if _is_number(row.get("step")) and _is_number(row.get(key)))
        if not points:
            continue
        if points in drawn:  # e.g. parameter groups that share a learning rate: one line
            first = drawn[points]
            shared[first] += 1
            lines[first].set_label(f"{first} (+{shared[first]} identical)")
            continue
        # A single point is invisible as a line: it gets a marker.
        (lines[key],) = ax.plot(*zip(*points), linewidth=1.0, alpha=0.8, label=key,
                                marker="o" if len(points) == 1 else None, markersize=4)
        drawn[points] = key
        colors[key.removesuffix("_step")] = lines[key].get_color()
    return colors


def _draw_epoch_points(ax, x: list[float | None], history: Sequence[dict[str, float]], key: str,
                       color: str | None = None, **style) -> list:
    points = [(xi, e[key]) for xi, e in zip(x, history) if xi is not None and _is_number(e.get(key))]
    if not points:
        return []
    return ax.plot(*zip(*points), label=key, color=color,
                   **{"marker": "o", "markersize": 6, "linewidth": 1.5, **style})


def _draw_monitor(ax, x: list[float | None], history: Sequence[dict[str, float]],
                  monitor: str) -> list:
    twin = ax.twinx()
    lines = _draw_epoch_points(twin, x, history, monitor, color=_MONITOR_COLOR, marker="s")
    twin.set_ylabel(monitor, color=_MONITOR_COLOR)
    twin.tick_params(axis="y", colors=_MONITOR_COLOR)
    return lines


def _finish_curves_axes(ax, title: str, x_label: str, twin_lines: list, monitor: str | None) -> None:
    ax.set_title(f"Loss and {monitor}" if twin_lines else title)
    ax.set_xlabel(x_label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 0.25
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles + twin_lines, labels + [line.get_label() for line in twin_lines],
              fontsize="small")
    if title == "Learning rate" and all(min(line.get_ydata()) > 0 for line in ax.lines):
        ax.set_yscale("log")


def is_learning_rate_key(key: str) -> bool:
    """``lr``, ``lr-*`` (Lightning's LearningRateMonitor), ``lr/*``, ``lr_*`` or ``*/lr``."""
    return key == "lr" or key.startswith(("lr-", "lr/", "lr_")) or key.endswith("/lr")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- confusion matrix ---------------------------------------------------------------------------


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
    _check_class_names(classes, confusion.shape[0], "confusion")
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


def _check_class_names(classes: Sequence[str], k: int, what: str) -> None:
    if len(classes) != k:
        raise InvalidValueError(
            f"Expected {k} class names to match the {what} tensor, but got {len(classes)}."
        )


# -- multi-label: per-class AP and precision-recall ---------------------------------------------


def plot_per_class_ap(ap: torch.Tensor, classes: Sequence[str], max_classes: int = 40) -> Figure:
    """Sorted bar chart of per-class average precision.

    Classes whose AP is NaN (no positive validation image) are left out and counted in the title.
    With more than ``max_classes`` valid classes, two panels show the ``max_classes // 2`` worst
    and best classes. A dashed line marks the mAP over the valid classes.

    Args:
        ap: ``[K]`` per-class AP, NaN for classes without positives
            (:func:`tresnet_ft.metrics.average_precision_per_class`).
        classes: ``K`` class names.
        max_classes: the most bars drawn.
    """
    if ap.ndim != 1:
        raise InvalidValueError(f"Expected per-class AP of shape [K], but got {list(ap.shape)}.")
    _check_class_names(classes, ap.shape[0], "AP")
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
    _check_class_names(classes, scores.shape[1], "scores")
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


# -- worst predictions --------------------------------------------------------------------------


def plot_worst_predictions(
    images: torch.Tensor,
    true_labels: Sequence[str],
    predicted: Sequence[str],
    confidences: Sequence[float],
    ncols: int = 4,
    correct: Sequence[bool] | None = None,
) -> Figure:
    """Grid of images captioned "true / predicted (confidence)", green when right, red when wrong.

    Args:
        images: ``[M, 3, H, W]`` uint8 in [0, 255] or float in [0, 1] (clamped).
        true_labels: ``M`` captions of the true class (or tags, joined).
        predicted: ``M`` captions of the prediction.
        confidences: ``M`` probabilities of the prediction.
        ncols: images per row.
        correct: ``M`` flags for the caption colour; by default ``true_labels[i] == predicted[i]``.

    Returns:
        A figure with ``ceil(M / ncols) * ncols`` axes, the first ``M`` holding one image each.
    """
    m = _check_image_grid(images, true_labels, predicted, confidences, ncols)
    correct = [t == p for t, p in zip(true_labels, predicted)] if correct is None else list(correct)
    if len(correct) != m:
        raise InvalidValueError(f"Expected {m} correct flags, one per image, but got {len(correct)}.")
    captions = [f"{true_labels[i]} / {predicted[i]} ({float(confidences[i]):.2f})" for i in range(m)]
    colors = [_CORRECT_COLOR if right else _WRONG_COLOR for right in correct]
    return _image_grid(images, captions, colors, ncols,
                       "Worst-predicted validation images (true / predicted (probability))")


def plot_image_grid(
    images: torch.Tensor,
    captions: Sequence[str] | None = None,
    ncols: int = 4,
    title: str | None = None,
) -> Figure:
    """Images in a grid, each with an optional caption: a training batch, or tagged files.

    Args:
        images: ``[M, 3, H, W]`` uint8 in [0, 255] or float in [0, 1] (clamped), e.g. a batch
            from ``ImageDataModule.train_dataloader()`` as it comes (augmented, still uint8).
        captions: ``M`` strings shown above the images (wrapped), or None for none.
        ncols: images per row.
        title: a title over the whole grid.

    Returns:
        A figure with ``ceil(M / ncols) * ncols`` axes, the first ``M`` holding one image each.

    Example:
        >>> fig = plot_image_grid(torch.zeros(3, 3, 8, 8, dtype=torch.uint8), ["a", "b", "c"], ncols=2)
        >>> len(fig.axes), fig.axes[2].get_title()
        (4, 'c')
    """
    m = _check_images(images, ncols)
    if captions is not None and len(captions) != m:
        raise InvalidValueError(f"Expected {m} captions for {m} images, but got {len(captions)}.")
    return _image_grid(images, list(captions) if captions is not None else [""] * m, ["black"] * m,
                       ncols, title)


def _image_grid(images: torch.Tensor, captions: list[str], colors: list[str], ncols: int,
                title: str | None) -> Figure:
    m = images.shape[0]
    pixels = _images_to_uint8_hwc(images)
    ncols = min(ncols, m)
    nrows = math.ceil(m / ncols)
    fig = Figure(figsize=(2.6 * ncols, 3.0 * nrows), layout="constrained")
    for index, ax in enumerate(fig.subplots(nrows, ncols, squeeze=False).flat):
        ax.set_axis_off()
        if index >= m:
            continue
        ax.imshow(pixels[index])
        if captions[index]:
            ax.set_title(textwrap.fill(captions[index], _CAPTION_WIDTH), fontsize=8, color=colors[index])
    if title:
        fig.suptitle(title)
    return fig


def _check_image_grid(images, true_labels, predicted, confidences, ncols: int) -> int:
    m = _check_images(images, ncols)
    lengths = {"true_labels": len(true_labels), "predicted": len(predicted),
               "confidences": len(confidences)}
    if any(length != m for length in lengths.values()):
        raise InvalidValueError(f"Expected {m} captions for {m} images, but got {lengths}.")
    return m


def _check_images(images: torch.Tensor, ncols: int) -> int:
    if images.ndim != 4 or images.shape[1] != 3:
        raise InvalidValueError(f"Expected images of shape [M, 3, H, W], but got {list(images.shape)}.")
    if images.shape[0] == 0:
        raise InvalidValueError("Expected at least one image, but got an empty batch.")
    if ncols < 1:
        raise InvalidValueError(f"Expected ncols to be a positive integer, but got {ncols}.")
    return images.shape[0]


def _images_to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    images = images.detach().cpu()
    if images.dtype != torch.uint8:
        images = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).numpy()
