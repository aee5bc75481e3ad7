"""Evaluation outputs kept for the plots, with memory that does not grow with the images seen.

:class:`ValidationOutputs` receives one batch of probabilities, targets and images at a time and
keeps, on the CPU:

- single-label: the predicted and the true class of every image (two int32 per image), enough
  for the confusion matrix;
- multi-label: the probabilities as float16 and the targets as uint8 (``3 * K`` bytes per
  image), needed for per-class AP and precision-recall curves;
- the ``num_worst`` worst-predicted images as uint8 with their probabilities and targets.
  Single-label ranks by the probability of the true class (lowest is worst), multi-label by the
  mean binary cross-entropy over the classes (highest is worst). Only the batch's own worst
  candidates leave the device.

Plain PyTorch: no Lightning, so it can be fed from any loop.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from ..errors import InvalidValueError

Task = Literal["single_label", "multi_label"]
TASKS = ("single_label", "multi_label")
_BCE_EPS = 1e-7  # keeps log() finite for probabilities of exactly 0 or 1
_MAX_TAGS_IN_CAPTION = 3


@dataclass
class WorstPredictions:
    """The worst-predicted images, worst first.

    Attributes:
        images: ``[M, 3, H, W]`` uint8.
        probs: ``[M, K]`` float32 probabilities.
        targets: ``[M]`` int64 labels (single-label) or ``[M, K]`` float32 in {0, 1}.
        badness: ``[M]``: ``1 - p(true class)`` or the mean binary cross-entropy.
    """

    images: torch.Tensor
    probs: torch.Tensor
    targets: torch.Tensor
    badness: torch.Tensor

    def concat(self, other: WorstPredictions) -> WorstPredictions:
        return WorstPredictions(
            torch.cat([self.images, other.images]), torch.cat([self.probs, other.probs]),
            torch.cat([self.targets, other.targets]), torch.cat([self.badness, other.badness]),
        )

    def select(self, indices: torch.Tensor) -> WorstPredictions:
        return WorstPredictions(
            self.images[indices], self.probs[indices], self.targets[indices],
            self.badness[indices],
        )


class ValidationOutputs:
    """Accumulates one evaluation pass (see the module docstring for what is kept).

    Args:
        task: ``"single_label"`` or ``"multi_label"``.
        num_worst: how many worst-predicted images to keep (0 keeps none).

    Example:
        >>> outputs = ValidationOutputs("single_label", num_worst=1)
        >>> outputs.add(torch.tensor([[0.75, 0.25], [0.25, 0.75]]), torch.tensor([0, 0]),
        ...             torch.zeros(2, 3, 4, 4))
        >>> outputs.confusion_matrix().tolist(), outputs.worst().badness.tolist()
        ([[1, 1], [0, 0]], [0.75])
    """

    def __init__(self, task: Task, num_worst: int = 16) -> None:
        if task not in TASKS:
            raise InvalidValueError(f"Expected task to be one of {TASKS}, but got {task!r}.")
        if num_worst < 0:
            raise InvalidValueError(f"Expected num_worst to be >= 0, but got {num_worst}.")
        self.task = task
        self.num_worst = num_worst
        self.num_classes: int | None = None
        self._chunks: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._worst: WorstPredictions | None = None

    @property
    def num_samples(self) -> int:
        return sum(len(chunk[0]) for chunk in self._chunks)

    def add(
        self, probs: torch.Tensor, targets: torch.Tensor, images: torch.Tensor | None = None
    ) -> None:
        """Add a batch.

        Args:
            probs: ``[B, K]`` probabilities (softmax for single-label, sigmoid for multi-label).
            targets: ``[B]`` integer labels (single-label) or ``[B, K]`` in {0, 1} (multi-label).
            images: ``[B, 3, H, W]`` float in [0, 1] (clamped) or uint8, on any device; ``None``
                keeps no worst images for this batch.
        """
        self._check_batch(probs, targets, images)
        probs = probs.detach().float()
        targets = targets.detach()
        if self.task == "single_label":
            targets = targets.long()
            kept = (probs.argmax(dim=1).int().cpu(), targets.int().cpu())
            badness = 1.0 - probs.gather(1, targets[:, None]).squeeze(1)
        else:
            targets = targets.float()
            kept = (probs.to(torch.float16).cpu(), (targets > 0.5).to(torch.uint8).cpu())
            badness = _mean_binary_cross_entropy(probs, targets)
        self._chunks.append(kept)
        if images is not None and self.num_worst > 0:
            self._keep_worst(badness, probs, targets, images)

    def confusion_matrix(self) -> torch.Tensor:
        """``[K, K]`` int64 counts, rows true classes, columns predictions (single-label)."""
        self._require("single_label", "confusion_matrix")
        k = self._require_classes()
        predicted, true = (torch.cat(part) for part in zip(*self._chunks))
        counts = torch.bincount(true.long() * k + predicted.long(), minlength=k * k)
        return counts.reshape(k, k)

    def scores_and_targets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``[N, K]`` float32 probabilities and ``[N, K]`` uint8 targets (multi-label)."""
        self._require("multi_label", "scores_and_targets")
        k = self._require_classes()
        if not self._chunks:
            return torch.zeros(0, k), torch.zeros(0, k, dtype=torch.uint8)
        probs, targets = (torch.cat(part) for part in zip(*self._chunks))
        return probs.float(), targets

    def worst(self) -> WorstPredictions | None:
        """The kept worst-predicted images, worst first; ``None`` when no images were given."""
        return self._worst

    # -- internals ------------------------------------------------------------------------------

    def _check_batch(
        self, probs: torch.Tensor, targets: torch.Tensor, images: torch.Tensor | None
    ) -> None:
        k = "K" if self.num_classes is None else str(self.num_classes)
        if probs.ndim != 2 or (self.num_classes is not None and probs.shape[1] != self.num_classes):
            raise InvalidValueError(f"Expected probs of shape [B, {k}], but got {list(probs.shape)}.")
        expected = probs.shape[:1] if self.task == "single_label" else probs.shape
        if targets.shape != expected:
            raise InvalidValueError(
                f"Expected {self.task} targets of shape {list(expected)} for probs "
                f"{list(probs.shape)}, but got {list(targets.shape)}."
            )
        if self.task == "single_label" and (targets.is_floating_point() or targets.is_complex()):
            raise InvalidValueError(
                f"Expected integer class labels for single_label targets, but got {targets.dtype}."
            )
        if images is not None and (images.ndim != 4 or images.shape[:2] != (len(probs), 3)):
            raise InvalidValueError(
                f"Expected images of shape [{len(probs)}, 3, H, W], but got {list(images.shape)}."
            )
        self.num_classes = probs.shape[1]

    def _keep_worst(
        self, badness: torch.Tensor, probs: torch.Tensor, targets: torch.Tensor,
        images: torch.Tensor,
    ) -> None:
        # Only this batch's own candidates go to the CPU, as uint8, and once M images are kept
        # only those worse than the best of them: late batches rarely move any image.
        candidates = badness.topk(min(self.num_worst, len(badness))).indices
        if self._worst is not None and len(self._worst.badness) == self.num_worst:
            candidates = candidates[badness[candidates] > self._worst.badness[-1].item()]
            if len(candidates) == 0:
                return
        batch = WorstPredictions(
            images=_to_uint8(images[candidates]).cpu(),
            probs=probs[candidates].cpu(),
            targets=targets[candidates].cpu(),
            badness=badness[candidates].cpu(),
        )
        if self._worst is not None:
            if self._worst.images.shape[1:] != batch.images.shape[1:]:
                raise InvalidValueError(
                    f"Expected images of one size [3, H, W] across batches, but got "
                    f"{list(self._worst.images.shape[1:])} then {list(batch.images.shape[1:])}."
                )
            batch = self._worst.concat(batch)
        # Stable, so among equally bad images the earlier one stays.
        order = batch.badness.sort(descending=True, stable=True).indices[: self.num_worst]
        self._worst = batch.select(order)

    def _require(self, task: Task, method: str) -> None:
        if self.task != task:
            raise InvalidValueError(f"{method}() needs {task} outputs, but these are {self.task}.")

    def _require_classes(self) -> int:
        if self.num_classes is None:
            raise InvalidValueError("Expected at least one batch of outputs, but got none.")
        return self.num_classes


def _mean_binary_cross_entropy(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[B]`` mean over classes of the binary cross-entropy of ``[B, K]`` probabilities."""
    probs = probs.clamp(_BCE_EPS, 1.0 - _BCE_EPS)
    return -(targets * probs.log() + (1.0 - targets) * (1.0 - probs).log()).mean(dim=1)


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images
    return (images.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def describe_worst(
    worst: WorstPredictions, classes: Sequence[str], threshold: float = 0.5
) -> tuple[list[str], list[str], list[float], list[bool]]:
    """Captions for :func:`tresnet_ft.plots.plot_worst_predictions`.

    Single-label: the true class, the predicted class and its probability. Multi-label: the true
    tags, the tags scoring above ``threshold`` (at most three shown, then ``+n``) and the
    highest tag probability; "right" means the two tag sets are equal.

    Returns:
        ``(true_labels, predicted, confidences, correct)``, one entry per image.
    """
    if worst.probs.shape[1] != len(classes):
        raise InvalidValueError(
            f"Expected {worst.probs.shape[1]} class names, but got {len(classes)}."
        )
    if worst.targets.ndim == 1:
        confidence, predicted = worst.probs.max(dim=1)
        true = worst.targets.tolist()
        return ([classes[i] for i in true], [classes[i] for i in predicted.tolist()],
                confidence.tolist(), [t == p for t, p in zip(true, predicted.tolist())])
    true_sets = [_tags(row > 0.5, row, classes) for row in worst.targets]
    predicted_sets = [_tags(row > threshold, row, classes) for row in worst.probs]
    correct = [set(t) == set(p) for t, p in zip(true_sets, predicted_sets)]
    return ([_join_tags(t) for t in true_sets], [_join_tags(p) for p in predicted_sets],
            worst.probs.max(dim=1).values.tolist(), correct)


def _tags(mask: torch.Tensor, order_by: torch.Tensor, classes: Sequence[str]) -> list[str]:
    """Names of the classes in ``mask``, highest ``order_by`` first."""
    indices = torch.nonzero(mask).flatten()
    indices = indices[order_by[indices].argsort(descending=True, stable=True)]
    return [classes[i] for i in indices.tolist()]


def _join_tags(tags: list[str]) -> str:
    if not tags:
        return "(none)"
    shown = ", ".join(tags[:_MAX_TAGS_IN_CAPTION])
    extra = len(tags) - _MAX_TAGS_IN_CAPTION
    return shown + (f" +{extra}" if extra > 0 else "")
