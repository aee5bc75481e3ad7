"""Fine-tuning optimisation: the ranges of the numeric training settings, parameter groups (head
vs backbone, layer-wise decay, no weight decay on norms and biases), optimizers, and per-step
learning-rate schedules. Plain PyTorch."""
from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import torch
from torch import nn
from ..errors import InvalidValueError

NUM_BACKBONE_DEPTHS = 5  # stem (0) and the four stages (1-4)


class Interval(NamedTuple):
    """The values a setting accepts, and a usual one for the fix in the error message."""

    low: float
    low_included: bool
    high: float  # math.inf: no upper bound
    high_included: bool
    usual: str
    none_is_off: bool = False  # None turns the feature off, and is accepted

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            return False  # NaN would pass every comparison below as False, i.e. unnoticed
        above = value >= self.low if self.low_included else value > self.low
        below = value <= self.high if self.high_included else value < self.high
        return above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'>=' if self.low_included else '>'} {self.low:g}"
        return f"in {'[' if self.low_included else '('}{self.low:g}, {self.high:g}{']' if self.high_included else ')'}"


_AT_LEAST_0, _PROBABILITY = (0, True, math.inf, False), (0, True, 1, False)
# TResNetClassifier's numeric settings and the values that can train (None, where a setting takes
# it, means "off" and is not checked). Out of range, most train without an error and learn nothing:
# a negative lr climbs the loss, momentum 1 never forgets, a decay of 1 never moves the average.
SETTING_RANGES: dict[str, Interval] = {
    "lr": Interval(0, False, math.inf, False, "1e-3"),
    "weight_decay": Interval(*_AT_LEAST_0, "1e-4"),
    "momentum": Interval(*_PROBABILITY, "0.9"),
    "warmup_epochs": Interval(*_AT_LEAST_0, "1"),
    "pct_start": Interval(0, False, 1, False, "0.2"),
    "label_smoothing": Interval(*_PROBABILITY, "0.1"),
    "ema_decay": Interval(0, False, 1, False, "0.9997, or null for no EMA", none_is_off=True),
    "drop_rate": Interval(*_PROBABILITY, "0.2"),
    "drop_path_rate": Interval(*_PROBABILITY, "0.1"),
    "backbone_lr_mult": Interval(*_AT_LEAST_0, "0.1"),
    "layer_decay": Interval(0, False, 1, True, "0.7, or null for none", none_is_off=True),
    "freeze_epochs": Interval(*_AT_LEAST_0, "1"),
    "asl_gamma_neg": Interval(*_AT_LEAST_0, "4"),
    "asl_gamma_pos": Interval(*_AT_LEAST_0, "0"),
    "asl_clip": Interval(*_PROBABILITY, "0.05"),
}


def check_settings(settings: dict[str, Any]) -> None:
    """Raise for the first of ``settings`` (names of :data:`SETTING_RANGES`) outside its range.

    Example:
        ``check_settings({"lr": -1})`` raises ``Expected lr to be a number > 0, but got -1.
        Fix: --model.lr 1e-3.``
    """
    for name, value in settings.items():
        interval = SETTING_RANGES[name]
        if value is None and interval.none_is_off:
            continue
        if value not in interval:
            raise InvalidValueError(f"Expected {name} to be a number {interval}, but got {value!r}. "
                                    f"Fix: --model.{name} {interval.usual}.")


def backbone_depth(name: str) -> int:
    """0 for the stem, 1-4 for ``body.layer1`` .. ``body.layer4``."""
    parts = name.split(".")
    return int(parts[1][len("layer"):]) if len(parts) > 1 and parts[1].startswith("layer") else 0


def _wants_decay(name: str, param: nn.Parameter) -> bool:
    """True weight decay applies to conv/linear weights only, never to norms or biases."""
    return param.ndim > 1 and not name.endswith(".bias")


def param_groups(model: nn.Module, lr: float, weight_decay: float, backbone_lr_mult: float = 1.0,
                 layer_decay: float | None = None) -> list[dict[str, Any]]:
    """Optimizer parameter groups for a TResNet with ``body`` and ``head``.

    The head trains at ``lr``; the backbone at ``lr * backbone_lr_mult``, further scaled by
    ``layer_decay ** (4 - depth)`` per stage when ``layer_decay`` is set (earlier stages move
    less). Norm weights and biases get no weight decay. Each group carries ``name`` (for LR
    logging) and ``initial_lr``.
    """
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if name.startswith("head."):
            key, group_lr = "head", lr
        else:
            depth = backbone_depth(name)
            scale = backbone_lr_mult * (layer_decay ** (NUM_BACKBONE_DEPTHS - 1 - depth) if layer_decay else 1.0)
            key, group_lr = (f"backbone.depth{depth}" if layer_decay else "backbone"), lr * scale
        decay = _wants_decay(name, param)
        group = groups.setdefault((key, decay), {
            "name": f"{key}{'' if decay else '.no_decay'}", "params": [], "lr": group_lr,
            "initial_lr": group_lr, "weight_decay": weight_decay if decay else 0.0})
        group["params"].append(param)
    return list(groups.values())


def build_optimizer(name: str, groups: list[dict[str, Any]], momentum: float = 0.9,
                    betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """``adamw`` (decoupled, i.e. true weight decay), ``adam`` or ``sgd`` (Nesterov).

    Adam and AdamW use the fused kernel where every parameter allows it: one pass over the
    weights instead of several, 0.32x the optimizer time of the foreach kernel on a CPU
    at 64 px (benchmarks/bench_optimizer.py).
    """
    if name in ("adamw", "adam"):
        kind = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        return kind(groups, betas=betas, fused=_can_fuse(groups) or None)
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=momentum, nesterov=True)
    raise InvalidValueError(f"Expected optimizer 'adamw', 'adam' or 'sgd', but got {name!r}.")


def _can_fuse(groups: list[dict[str, Any]]) -> bool:
    params = [param for group in groups for param in group["params"]]
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warm-up from 0 over ``warmup_steps``, then cosine to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                    pct_start: float = 0.2, min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step schedule: ``cosine`` (warm-up + cosine), ``onecycle`` or ``constant``."""
    if total_steps < 1:
        raise InvalidValueError(f"Expected at least one training step, but got total_steps={total_steps}.")
    if name == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, total_steps, warmup_steps, min_lr_ratio))
    if name == "onecycle":
        max_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lrs, total_steps=total_steps,
                                                   pct_start=pct_start, cycle_momentum=False)
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    raise InvalidValueError(f"Expected scheduler 'cosine', 'onecycle' or 'constant', but got {name!r}.")

