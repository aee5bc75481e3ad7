"""Classifier heads: each turns the backbone map ``[B, C, H, W]`` into logits ``[B, K]``.

Heads are looked up by name in :data:`HEADS` so a recipe can pick one in YAML. Every head's
constructor takes ``(num_features, num_classes, **head_args)``.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from .linear import LinearHead
from .ml_decoder import MLDecoder, convert_ml_decoder_state_dict
from ..errors import InvalidValueError

HEADS: dict[str, Callable[..., nn.Module]] = {
    "linear": LinearHead,
    "ml_decoder": MLDecoder,
}


def create_head(name: str, num_features: int, num_classes: int, **head_args: Any) -> nn.Module:
    """Build the head registered as ``name``.

    Raises:
        ValueError: ``name`` is not a registered head (the message lists the valid ones).
    """
    if name not in HEADS:
        raise InvalidValueError(f"Expected head to be one of {sorted(HEADS)}, but got {name!r}.")
    if num_classes < 1:
        raise InvalidValueError(f"Expected num_classes to be a positive integer, but got {num_classes}.")
    return HEADS[name](num_features, num_classes, **head_args)


__all__ = ["HEADS", "LinearHead", "MLDecoder", "convert_ml_decoder_state_dict", "create_head"]
