"""Fine-tuning optimisation: parameter groups (head vs backbone, layer-wise decay, no weight decay
on norms and biases), optimizers, and per-step learning-rate schedules. Plain PyTorch."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from ..errors import InvalidValueError

NUM_BACKBONE_DEPTHS = 5  # stem (0) and the four stages (1-4)


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

