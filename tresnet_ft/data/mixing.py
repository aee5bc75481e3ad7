"""Batch-level mixup and cutmix on the device (plain torch), producing soft targets.

Each batch is mixed with itself reversed along the batch axis, so no index gather is needed: image
``i`` is blended with image ``B-1-i``. One mixing weight ``lam`` per batch is drawn from
``Beta(alpha, alpha)``; cutmix pastes a box of area ``1 - lam`` and then uses the exact pasted
area as the label weight.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F
from ..errors import InvalidValueError


class BatchMixer:
    """Mixup / cutmix for a batch of images and labels.

    Args:
        num_classes: ``K``, for one-hot targets.
        mixup_alpha: Beta parameter for mixup; 0 disables mixup.
        cutmix_alpha: Beta parameter for cutmix; 0 disables cutmix.
        prob: probability that a batch is mixed at all.
        switch_prob: when both are enabled, probability of cutmix instead of mixup.

    Call with ``images [B, C, H, W]`` (float) and ``targets`` (``[B]`` class indices or ``[B, K]``
    soft/multi-hot); returns ``(images [B, C, H, W], targets [B, K] float)``. Targets are returned
    as ``[B, K]`` probabilities even for a batch that is not mixed, so the loss sees one format.

    Example:
        >>> mixer = BatchMixer(num_classes=10, mixup_alpha=0.8)
        >>> images, soft = mixer(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))
        >>> soft.shape, bool(torch.allclose(soft.sum(1), torch.ones(4)))
        (torch.Size([4, 10]), True)
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
    ) -> None:
        if num_classes < 1:
            raise InvalidValueError(
                f"Expected num_classes to be a positive integer, but got {num_classes}."
            )
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise InvalidValueError(
                f"Expected non-negative alphas, but got mixup {mixup_alpha}, cutmix {cutmix_alpha}."
            )
        for name, value in (("prob", prob), ("switch_prob", switch_prob)):
            if not 0.0 <= value <= 1.0:
                raise InvalidValueError(f"Expected {name} in [0, 1], but got {value}.")
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob = prob, switch_prob

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if images.ndim != 4 or not images.is_floating_point():
            raise InvalidValueError(
                f"Expected float images [B, C, H, W], but got {images.dtype} {tuple(images.shape)}."
            )
        soft = self.soft_targets(targets).to(images.dtype)
        if not self.enabled or len(images) < 2 or torch.rand(()).item() >= self.prob:
            return images, soft
        use_cutmix = self.cutmix_alpha > 0 and (
            self.mixup_alpha == 0 or torch.rand(()).item() < self.switch_prob
        )
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        if use_cutmix:
            images, lam = cutmix(images, lam)
        else:
            images = images * lam + images.flip(0) * (1.0 - lam)
        return images, soft * lam + soft.flip(0) * (1.0 - lam)

    def soft_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """Class indices ``[B]`` → one-hot ``[B, K]``; ``[B, K]`` targets pass through as float."""
        if targets.ndim == 1:
            return F.one_hot(targets.long(), self.num_classes).float()
        if targets.ndim == 2 and targets.shape[1] == self.num_classes:
            return targets.float()
        raise InvalidValueError(
            f"Expected targets [B] or [B, {self.num_classes}], but got {tuple(targets.shape)}."
        )


def cutmix(images: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
    """Paste a random box of area about ``1 - lam`` from the reversed batch into each image.

    Returns the mixed images ``[B, C, H, W]`` (a new tensor) and the weight of the original
    images, corrected for the box being clipped at the border.
    """
    height, width = images.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    box_h, box_w = int(height * cut), int(width * cut)
    cy, cx = (int(v) for v in (torch.randint(height, ()), torch.randint(width, ())))
    top, bottom = max(cy - box_h // 2, 0), min(cy + box_h // 2, height)
    left, right = max(cx - box_w // 2, 0), min(cx + box_w // 2, width)
    mixed = images.clone()
    mixed[..., top:bottom, left:right] = images.flip(0)[..., top:bottom, left:right]
    pasted = (bottom - top) * (right - left) / (height * width)
    return mixed, 1.0 - pasted
