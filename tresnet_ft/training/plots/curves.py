"""Training curves: loss, metrics and learning rate of a run, per step and per epoch.

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
from collections import Counter
from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ...errors import InvalidValueError

logger = logging.getLogger(__name__)

_AXIS_KEYS = ("epoch", "step")
_MONITOR_COLOR = "tab:green"  # the metric on the loss panel's second axis


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
    point. The x axis is the step when ``steps`` is given (``history`` entries without a
    ``step`` are then left out); otherwise ``epoch`` when every entry has a distinct one, else
    ``step``, else the entry index.

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
    per_epoch, per_step, titles, twin = _curve_panels(history, steps, monitor, max_metrics)
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


def _curve_panels(
    history: Sequence[dict[str, float]], steps: Sequence[dict[str, float]], monitor: str | None,
    max_metrics: int,
) -> tuple[dict[str, list[str]], dict[str, list[str]], list[str], str | None]:
    """The per-epoch and per-step keys of each panel, the titles of the panels that have
    something to draw, and the key drawn on the loss panel's second axis (or None)."""
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
    return per_epoch, per_step, titles, twin


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
