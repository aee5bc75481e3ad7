"""Losses by name, like heads and norms: ``create_loss("asl", "multi_label", gamma_neg=4.0)``.

Each entry says which task it fits and how its module is built from the shared settings
(:class:`LossSettings`); the training module asks for its loss here instead of choosing in code.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InvalidValueError
from .modules import AsymmetricLoss, AsymmetricLossSingleLabel, BinaryCrossEntropy, LabelSmoothingCrossEntropy

TASKS = ("single_label", "multi_label")


@dataclass(frozen=True)
class LossSettings:
    """The loss knobs a recipe sets (``--model.label_smoothing`` ...); each loss reads the ones it uses."""

    label_smoothing: float = 0.1  # cross_entropy, asl_single
    asl_gamma_neg: float = 4.0  # asl, asl_single: focusing on negatives
    asl_gamma_pos: float = 0.0  # asl, asl_single: focusing on positives
    asl_clip: float = 0.05  # asl: probability margin on negatives


class MultiHotTargets(nn.Module):
    """Feeds ``[N, K]`` {0, 1} targets of any dtype (the data gives uint8/int64) to ``loss`` as float."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, targets.float())


@dataclass(frozen=True)
class LossEntry:
    task: str  # the task the loss fits
    build: Callable[[LossSettings], nn.Module]
    summary: str


LOSSES: dict[str, LossEntry] = {
    "cross_entropy": LossEntry(
        "single_label", lambda s: LabelSmoothingCrossEntropy(label_smoothing=s.label_smoothing),
        "cross-entropy with label smoothing; mixup/cutmix soft targets use soft-target cross-entropy"),
    "asl_single": LossEntry(
        "single_label", lambda s: AsymmetricLossSingleLabel(gamma_pos=s.asl_gamma_pos, gamma_neg=s.asl_gamma_neg,
                                                            label_smoothing=s.label_smoothing),
        "the asymmetric loss for one label per image"),
    # reduction "mean": the sum over all N·K elements divided by N·K, so learning rates match BCE's scale
    "asl": LossEntry(
        "multi_label", lambda s: MultiHotTargets(AsymmetricLoss(gamma_neg=s.asl_gamma_neg, gamma_pos=s.asl_gamma_pos,
                                                                clip=s.asl_clip, reduction="mean")),
        "the asymmetric loss (ASL) for multi-label tagging"),
    "bce": LossEntry("multi_label", lambda s: MultiHotTargets(BinaryCrossEntropy()),
                     "binary cross-entropy with logits"),
}
DEFAULT_LOSS = {"single_label": "cross_entropy", "multi_label": "asl"}


def resolve_loss(name: str, task: str) -> str:
    """The registry name for ``name`` (``auto``: the task's default), checked against ``task``."""
    if task not in TASKS:
        raise InvalidValueError(f"Expected task to be one of {list(TASKS)}, but got {task!r}.")
    if name == "auto":
        return DEFAULT_LOSS[task]
    if name not in LOSSES:
        raise InvalidValueError(f"Expected loss to be one of {['auto', *LOSSES]}, but got {name!r}.")
    if LOSSES[name].task != task:
        raise InvalidValueError(f"Loss {name!r} does not fit a {task} task. Fix: use loss='auto'.")
    return name


def create_loss(name: str, task: str, **settings: float) -> nn.Module:
    """The loss module for ``name`` (or ``auto``) and ``task``; ``settings`` are :class:`LossSettings` fields.

    The module maps ``(logits [N, K], targets) -> scalar float32 loss``, with targets ``[N]`` class
    indices or ``[N, K]`` soft labels (single-label), or ``[N, K]`` multi-hot tags (multi-label).
    """
    return LOSSES[resolve_loss(name, task)].build(LossSettings(**settings))
