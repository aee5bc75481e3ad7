"""The classic classifier head: global average pool, optional dropout, one Linear layer."""
from __future__ import annotations

import torch
from torch import nn


class LinearHead(nn.Module):
    """Global-average-pool the backbone map, then a fully connected layer.

    The layer is called ``fc`` so the state-dict key is ``head.fc.*``, as in timm's published
    TResNet classifiers.

    Args:
        num_features: channels ``C`` of the backbone map.
        num_classes: number of outputs ``K``.
        drop_rate: dropout probability before ``fc`` (0 disables it).

    Shapes:
        ``[B, C, H, W]`` -> ``[B, K]``.
    """

    def __init__(self, num_features: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.drop_rate = float(drop_rate)
        self.fc = nn.Linear(num_features, num_classes)
        # timm's TResNet init for the classifier; small logits keep early fine-tuning stable.
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features.mean(dim=(2, 3))
        if self.drop_rate > 0:
            pooled = nn.functional.dropout(pooled, p=self.drop_rate, training=self.training)
        return self.fc(pooled)
