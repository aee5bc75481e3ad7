"""The worst-predicted images of an evaluation pass, kept in fixed memory on the batches' device.

:func:`keep_worst` merges each batch into the ``M`` worst images seen so far:

- single-label ranks by the probability of the true class (lowest is worst), multi-label by the
  mean binary cross-entropy over the classes (highest is worst) (:func:`badness`);
- only the batch's own ``M`` worst candidates are converted (to uint8) and merged, with fixed
  shapes and no read of device data by the host, so a GPU never waits for it;
- among equally bad images the earlier one stays.

:func:`describe_worst` writes the captions of the worst-predictions grid. Plain PyTorch: no
Lightning; :class:`~tresnet_ft.training.evaluation.EvaluationAccumulator` feeds it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from ..errors import InvalidValueError

_BCE_EPS = 1e-7  # keeps log() finite for probabilities of exactly 0 or 1
_MAX_TAGS_IN_CAPTION = 3


@dataclass
class WorstPredictions:
    """The worst-predicted images, worst first.

    Attributes:
        images: ``[M, 3, H, W]`` uint8.
        probs: ``[M, K]`` float32 probabilities.
        targets: ``[M]`` int64 labels (single-label) or ``[M, K]`` float32 in {0, 1}.
        badness: ``[M]`` float32: ``1 - p(true class)`` or the mean binary cross-entropy.
    """

    images: torch.Tensor
    probs: torch.Tensor
    targets: torch.Tensor
    badness: torch.Tensor

    def __len__(self) -> int:
        return len(self.badness)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """``(images, probs, targets, badness)``, the constructor's order."""
        return tuple(getattr(self, f.name) for f in fields(self))

    def concat(self, other: WorstPredictions) -> WorstPredictions:
        return WorstPredictions(*(torch.cat([getattr(self, f.name), getattr(other, f.name)]) for f in fields(self)))

    def select(self, indices: torch.Tensor) -> WorstPredictions:
        return WorstPredictions(*(getattr(self, f.name).index_select(0, indices) for f in fields(self)))

    def to(self, device: torch.device | str) -> WorstPredictions:
        return WorstPredictions(*(getattr(self, f.name).to(device) for f in fields(self)))


def badness(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """How wrong each prediction is, ``[B]``: ``1 - p(true class)`` for ``[B]`` labels, the mean
    binary cross-entropy over the classes for ``[B, K]`` multi-label targets."""
    if targets.ndim == 1:
        return 1.0 - probs.gather(1, targets.long()[:, None]).squeeze(1)
    return _mean_binary_cross_entropy(probs, targets.float())


def keep_worst(
    kept: WorstPredictions | None, probs: torch.Tensor, targets: torch.Tensor,
    images: torch.Tensor, num_worst: int,
) -> WorstPredictions:
    """The ``num_worst`` worst of ``kept`` (earlier batches) and this batch, worst first.

    Args:
        kept: what earlier batches left, or None.
        probs: ``[B, K]`` float probabilities.
        targets: ``[B]`` labels or ``[B, K]`` multi-label targets.
        images: ``[B, 3, H, W]`` float in [0, 1] (clamped) or uint8, on ``probs``' device.
        num_worst: ``M``, at least 1.
    """
    if kept is not None and kept.images.shape[1:] != images.shape[1:]:
        raise InvalidValueError(
            f"Expected images of one size [3, H, W] across batches, but got "
            f"{list(kept.images.shape[1:])} then {list(images.shape[1:])}."
        )
    scores = badness(probs, targets)
    # Sorting, not boolean masks: fixed shapes, so no host sync per batch.
    candidates = scores.sort(descending=True, stable=True).indices[:num_worst]
    targets = targets.long() if targets.ndim == 1 else targets.float()
    batch = WorstPredictions(
        images=_to_uint8(images.index_select(0, candidates)),
        probs=probs.float().index_select(0, candidates),
        targets=targets.index_select(0, candidates),
        badness=scores.float().index_select(0, candidates),
    )
    return batch if kept is None else merge_worst([kept, batch], num_worst)


def merge_worst(parts: Sequence[WorstPredictions], num_worst: int) -> WorstPredictions:
    """The ``num_worst`` worst of ``parts`` (in order: among ties the earlier part wins)."""
    merged = parts[0]
    for part in parts[1:]:
        if part.images.shape[1:] != merged.images.shape[1:]:
            raise InvalidValueError(
                f"Expected worst-prediction images of one size [3, H, W], but got "
                f"{list(merged.images.shape[1:])} and {list(part.images.shape[1:])}."
            )
        merged = merged.concat(part)
    order = merged.badness.sort(descending=True, stable=True).indices[:num_worst]
    return merged.select(order)


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
    """Captions for :func:`tresnet_ft.training.plots.plot_worst_predictions`.

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
