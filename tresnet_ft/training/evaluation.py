"""One evaluation pass (a validation or test epoch), accumulated once and synchronised once.

:class:`EvaluationAccumulator` takes each batch's probabilities, targets and (optionally) images
and keeps only what the metrics, the threshold tuning and the plots need, on the batches' device
and without reading device data on the host. :meth:`EvaluationAccumulator.compute` gathers the
pass from every process and returns an :class:`EvaluationResult`, the same on every rank, from
which the logged metrics, the tuned thresholds and every plot are read.

What is kept, per process:

- single-label: the ``[K, K]`` confusion counts and the top-5 hits (int64), enough for top-1,
  top-5, macro and per-class accuracy: ``8 * K**2`` bytes whatever the number of images ``N``;
- multi-label: true/false positives and false negatives per class at 0.5 (``24 * K`` bytes) for
  F1, precision and recall, and the scores for AP, threshold tuning and precision-recall curves:
  each score as a float16 *logit* plus a uint8 target (3 bytes). AP depends only on the ranking,
  and float16 logits rank confident scores far more finely than float16 probabilities (5e-4
  apart near 1): on 20,000 x 20 overlapping scores the mAP moved by 7e-5 instead of 5e-4;
- the ``num_worst`` worst-predicted images (uint8) with their probabilities: ``M * (3 * H * W +
  4 * K + 12)`` bytes (:func:`~tresnet_ft.training.validation_outputs.keep_worst`).

Bounded memory: the multi-label scores are kept while all processes' scores together fit in
``max_score_bytes`` (64 MiB by default: 22 million scores, e.g. 280,000 images of 80 tags). Beyond
that, each class keeps a histogram of its logits instead: ``num_bins`` even bins over
``[-16, 16]`` (the largest power of two from 1,024 to 65,536 whose ``2 * K * num_bins`` int32
counts fit the budget; 65,536 bins, 4.9e-4 logit wide, up to 128 classes). AP and the tuned
thresholds are then those of scores rounded to their bin: AP moves only where a positive and a
negative of one class share a bin (by 2e-5 at 65,536 bins, 1e-3 at 1,024 in the tests). F1 at
0.5 stays exact (counted per batch); no precision-recall curve is drawn. Computing AP sorts the
kept scores once on the CPU, transiently about 40 bytes per score.

Synchronisation: at most three collectives per pass, whatever the number of metrics:

1. one ``all_reduce`` (sum, int64) of every count plus one header row per rank (its number of
   images, whether it holds histograms, its worst images' count and size): sums stay one
   tensor's size however many processes there are, and the headers tell every rank the sizes
   of step 3;
2. multi-label beyond the budget only: one ``all_reduce`` of the histograms (int32);
3. one ``all_gather`` of a byte buffer with each rank's worst images and kept scores, padded to
   the longest; skipped when all are empty.

Plain PyTorch: no Lightning; ``torch.distributed``'s collectives unless others are passed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.distributed as dist

from ..errors import InvalidValueError
from .metrics import (
    average_precision_per_class, confusion_counts, histogram_table, mean_over_classes_with_positives,
    score_histogram, single_label_scores, threshold_counts, threshold_scores, top_k_hits,
)
from .validation_outputs import WorstPredictions, keep_worst, merge_worst

Task = Literal["single_label", "multi_label"]
TASKS = ("single_label", "multi_label")
DEFAULT_MAX_SCORE_BYTES = 64 * 2**20
_BYTES_PER_SCORE = 3  # a float16 logit and a uint8 target
_MIN_BINS, _MAX_BINS = 2**10, 2**16
_HEADER_LENGTH = 5  # images, holds histograms, worst images kept, their height, their width


class Collectives(Protocol):
    """The two collectives an evaluation needs, over ``world_size`` processes."""

    world_size: int
    rank: int

    def all_reduce(self, tensor: torch.Tensor) -> None:
        """Sum ``tensor`` over all processes, in place."""

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every process's ``tensor`` (the same shape on all), in rank order."""


class TorchDistributed:
    """:class:`Collectives` of the default ``torch.distributed`` process group (gloo, NCCL, ...)."""

    def __init__(self) -> None:
        self.world_size, self.rank = dist.get_world_size(), dist.get_rank()

    def all_reduce(self, tensor: torch.Tensor) -> None:
        dist.all_reduce(tensor)

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        gathered = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(gathered, tensor)
        return gathered


def default_collectives() -> Collectives | None:
    """:class:`TorchDistributed` when several processes share an initialised group, else None."""
    several = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    return TorchDistributed() if several else None


@dataclass
class EvaluationResult:
    """One finished evaluation pass over all processes' batches (CPU tensors, the same on every rank).

    Attributes:
        task: ``"single_label"`` or ``"multi_label"``.
        num_classes: ``K``.
        num_samples: ``N``, images seen by all processes together.
        metrics: the scalar metrics by name, without a stage prefix: ``top1``, ``top5`` (K > 5),
            ``macro_accuracy``; or ``mAP``, ``f1_micro``, ``f1_macro``, ``precision_*``,
            ``recall_*`` (at 0.5). Empty when ``N`` is 0.
        confusion_matrix: ``[K, K]`` int64, rows true classes (single-label).
        per_class_accuracy: ``[K]`` float32 (single-label).
        per_class_ap: ``[K]`` float32, NaN for classes without positives (multi-label).
        scores, targets, weights: the multi-label scores as rows for AP and threshold tuning:
            ``[N, K]`` probabilities, ``[N, K]`` uint8 targets and None; beyond the memory budget,
            histogram bins (:func:`~tresnet_ft.training.metrics.histogram_table`): ``[2B, K]``
            bin centres, targets and counts.
        worst: the worst-predicted images, worst first; None without images.
    """

    task: Task
    num_classes: int
    num_samples: int
    metrics: dict[str, float]
    confusion_matrix: torch.Tensor | None = None
    per_class_accuracy: torch.Tensor | None = None
    per_class_ap: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    worst: WorstPredictions | None = None

    @property
    def classes_without_positives(self) -> list[int]:
        """Classes left out of the mAP (multi-label)."""
        return [] if self.per_class_ap is None else torch.nonzero(self.per_class_ap.isnan()).flatten().tolist()


@dataclass
class _State:
    """What one process (or, gathered, all of them) holds: see the module docstring."""

    num_samples: int
    counts: torch.Tensor  # single-label: K*K confusion, top-5 hits; multi-label: tp, fp, fn per class
    logits: torch.Tensor | None = None  # [n, K] float16 (multi-label, within the budget)
    targets: torch.Tensor | None = None  # [n, K] uint8
    histogram: torch.Tensor | None = None  # [2, K, B] int32 (multi-label, beyond the budget)
    worst: WorstPredictions | None = None


class EvaluationAccumulator:
    """Accumulates one evaluation pass; :meth:`compute` synchronises it once and starts a new one.

    Args:
        task: ``"single_label"`` or ``"multi_label"``.
        num_classes: ``K``.
        num_worst: how many worst-predicted images to keep (0 keeps none).
        threshold: the probability above which a tag counts as predicted for F1 (multi-label).
        max_score_bytes: the budget for multi-label scores over all processes (module docstring).

    Example:
        >>> evaluation = EvaluationAccumulator("single_label", num_classes=2, num_worst=1)
        >>> evaluation.update(torch.tensor([[0.75, 0.25], [0.25, 0.75]]), torch.tensor([0, 0]),
        ...                   torch.zeros(2, 3, 4, 4))
        >>> result = evaluation.compute()
        >>> result.metrics["top1"], result.confusion_matrix.tolist(), result.worst.badness.tolist()
        (0.5, [[1, 1], [0, 0]], [0.75])
    """

    def __init__(self, task: Task, num_classes: int, num_worst: int = 16, threshold: float = 0.5,
                 max_score_bytes: int = DEFAULT_MAX_SCORE_BYTES) -> None:
        if task not in TASKS:
            raise InvalidValueError(f"Expected task to be one of {TASKS}, but got {task!r}.")
        least = 2 if task == "single_label" else 1
        if not isinstance(num_classes, int) or num_classes < least:
            raise InvalidValueError(f"Expected num_classes to be an integer of at least {least}, but got {num_classes!r}.")
        if num_worst < 0:
            raise InvalidValueError(f"Expected num_worst to be >= 0, but got {num_worst}.")
        if not 0.0 <= threshold <= 1.0:
            raise InvalidValueError(f"Expected threshold to be a probability in [0, 1], but got {threshold}.")
        self.task, self.num_classes, self.num_worst, self.threshold = task, num_classes, num_worst, float(threshold)
        self.max_score_bytes = max_score_bytes
        self.num_bins = _histogram_bins(num_classes, max_score_bytes)
        self.reset()

    def reset(self) -> None:
        """Forget every batch (:meth:`compute` does this itself)."""
        self._device: torch.device | None = None
        self._num_samples = 0  # from shapes: known on the host without reading the device
        self._counts: torch.Tensor | None = None
        self._logits: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._histogram: torch.Tensor | None = None
        self._worst: WorstPredictions | None = None

    @property
    def held_bytes(self) -> int:
        """The bytes this pass holds between batches (on the batches' device)."""
        tensors = [self._counts, self._histogram, *self._logits, *self._targets,
                   *(self._worst.tensors() if self._worst is not None else ())]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def update(self, probs: torch.Tensor, targets: torch.Tensor, images: torch.Tensor | None = None) -> None:
        """Add a batch, on its own device, without a host sync.

        Args:
            probs: ``[B, K]`` probabilities (softmax for single-label, sigmoid for multi-label).
            targets: ``[B]`` integer labels (single-label) or ``[B, K]`` in {0, 1} (multi-label).
            images: ``[B, 3, H, W]`` float in [0, 1] (clamped) or uint8, for the worst
                predictions; None keeps none from this batch.
        """
        self._check_batch(probs, targets, images)
        probs, targets = probs.detach().float(), targets.detach()
        self._device = probs.device
        if self.task == "single_label":
            hits = top_k_hits(probs, targets, 5) if self.num_classes > 5 else probs.new_zeros((), dtype=torch.int64)
            counts = torch.cat([confusion_counts(probs, targets).flatten(), hits[None]])
        else:
            counts = threshold_counts(probs, targets, self.threshold).flatten()
            self._keep_scores(probs, targets)
        self._counts = counts if self._counts is None else self._counts.add_(counts)
        self._num_samples += len(probs)
        if images is not None and self.num_worst > 0:
            self._worst = keep_worst(self._worst, probs, targets, images.detach(), self.num_worst)

    def compute(self, collectives: Collectives | None = None,
                device: torch.device | str | None = None) -> EvaluationResult:
        """Gather the pass from all processes, compute everything, and :meth:`reset`.

        Args:
            collectives: how to reach the other processes; None: :func:`default_collectives`.
            device: where a process without batches puts its share for the collectives (the
                device of the others' batches, e.g. its GPU); ignored once a batch was seen.
        """
        collectives = default_collectives() if collectives is None else collectives
        device = self._device or torch.device(device or "cpu")
        try:
            state = self._local_state(device)
            if collectives is not None and collectives.world_size > 1:
                state = self._gather(state, collectives, device)
            return self._result(state)
        finally:
            self.reset()

    # -- per batch --------------------------------------------------------------------------------

    def _keep_scores(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        # Histograms bin the float16 logits too, so they hold the same whenever the switch happens.
        logits = torch.logit(probs).half()
        within_budget = (self._num_samples + len(probs)) * self.num_classes * _BYTES_PER_SCORE <= self.max_score_bytes
        if self._histogram is None and within_budget:
            self._logits.append(logits)
            self._targets.append((targets > 0.5).to(torch.uint8))
            return
        if self._histogram is None:
            self._histogram = self._to_histogram(self._logits, self._targets, probs.device)
            self._logits, self._targets = [], []
        self._histogram.add_(score_histogram(logits, targets, self.num_bins))

    def _to_histogram(self, logits: list[torch.Tensor], targets: list[torch.Tensor],
                      device: torch.device) -> torch.Tensor:
        histogram = torch.zeros(2, self.num_classes, self.num_bins, dtype=torch.int32, device=device)
        for chunk, chunk_targets in zip(logits, targets):
            histogram.add_(score_histogram(chunk, chunk_targets, self.num_bins))
        return histogram

    def _check_batch(self, probs: torch.Tensor, targets: torch.Tensor, images: torch.Tensor | None) -> None:
        if probs.ndim != 2 or probs.shape[1] != self.num_classes:
            raise InvalidValueError(f"Expected probs of shape [B, {self.num_classes}], but got {list(probs.shape)}.")
        expected = probs.shape[:1] if self.task == "single_label" else probs.shape
        if targets.shape != expected:
            raise InvalidValueError(f"Expected {self.task} targets of shape {list(expected)} for probs "
                                    f"{list(probs.shape)}, but got {list(targets.shape)}.")
        if self.task == "single_label" and (targets.is_floating_point() or targets.is_complex()):
            raise InvalidValueError(f"Expected integer class labels for single_label targets, but got {targets.dtype}.")
        if images is not None and (images.ndim != 4 or images.shape[:2] != (len(probs), 3)):
            raise InvalidValueError(f"Expected images of shape [{len(probs)}, 3, H, W], but got {list(images.shape)}.")

    # -- at the end of the pass -------------------------------------------------------------------

    def _local_state(self, device: torch.device) -> _State:
        k = self.num_classes
        size = k * k + 1 if self.task == "single_label" else 3 * k
        counts = self._counts if self._counts is not None else torch.zeros(size, dtype=torch.int64, device=device)
        state = _State(self._num_samples, counts, histogram=self._histogram, worst=self._worst)
        if self.task == "multi_label" and self._histogram is None:
            state.logits = torch.cat(self._logits) if self._logits else torch.zeros(0, k, dtype=torch.float16, device=device)
            state.targets = torch.cat(self._targets) if self._targets else torch.zeros(0, k, dtype=torch.uint8, device=device)
        return state

    def _gather(self, local: _State, collectives: Collectives, device: torch.device) -> _State:
        headers, gathered = self._sum_counts(local, collectives, device)  # collective 1
        too_many = self.task == "multi_label" and collectives.world_size * max(row[0] for row in headers) * \
            self.num_classes * _BYTES_PER_SCORE > self.max_score_bytes
        if any(row[1] for row in headers) or too_many:  # histograms somewhere, or the scores would not fit
            gathered.histogram = local.histogram if local.histogram is not None else \
                self._to_histogram([local.logits], [local.targets], device)
            collectives.all_reduce(gathered.histogram)  # collective 2: histograms add up
            local.logits = local.targets = None
            headers = [[row[0], 1, *row[2:]] for row in headers]
        parts = self._gather_payload(local, headers, collectives, device)  # collective 3
        worst = [WorstPredictions(*part[:4]) for part, row in zip(parts, headers) if row[2] > 0]
        gathered.worst = merge_worst(worst, self.num_worst) if worst else None
        if self.task == "multi_label" and gathered.histogram is None:
            gathered.logits = torch.cat([part[-2] for part in parts])
            gathered.targets = torch.cat([part[-1] for part in parts])
        return gathered

    def _sum_counts(self, local: _State, collectives: Collectives,
                    device: torch.device) -> tuple[list[list[int]], _State]:
        """One ``all_reduce`` of every count plus each rank's header, in its own row (zeros elsewhere)."""
        rows = collectives.world_size * _HEADER_LENGTH
        worst = local.worst
        height, width = worst.images.shape[2:] if worst is not None else (0, 0)
        header = [local.num_samples, int(local.histogram is not None), len(worst) if worst is not None else 0,
                  height, width]
        packed = torch.zeros(rows + len(local.counts), dtype=torch.int64, device=device)
        packed[collectives.rank * _HEADER_LENGTH:][:_HEADER_LENGTH] = torch.tensor(header)
        packed[rows:] = local.counts
        collectives.all_reduce(packed)
        headers = packed[:rows].view(-1, _HEADER_LENGTH).tolist()  # the pass's one host read
        return headers, _State(sum(row[0] for row in headers), packed[rows:])

    def _gather_payload(self, local: _State, headers: list[list[int]], collectives: Collectives,
                        device: torch.device) -> list[list[torch.Tensor]]:
        """Every rank's worst images and kept scores, by one ``all_gather`` of bytes padded to the longest."""
        layouts = [self._payload_layout(row) for row in headers]
        length = max(_layout_bytes(layout) for layout in layouts)
        buffers = [torch.zeros(0, dtype=torch.uint8)] * len(layouts)
        if length > 0:  # else nothing to send: no collective
            mine = _pack(device, *(local.worst.tensors() if local.worst else ()),
                         *((local.logits, local.targets) if local.logits is not None else ()))
            buffers = collectives.all_gather(torch.cat([mine, mine.new_zeros(length - len(mine))]))
        return [_unpack(buffer.cpu(), layout) for buffer, layout in zip(buffers, layouts)]

    def _payload_layout(self, header: list[int]) -> list[tuple[torch.dtype, tuple[int, ...]]]:
        """Dtypes and shapes of one rank's byte buffer, from its header row."""
        num_samples, histogram, worst, height, width = header
        k, layout = self.num_classes, []
        if worst:
            targets = (torch.int64, (worst,)) if self.task == "single_label" else (torch.float32, (worst, k))
            layout += [(torch.uint8, (worst, 3, height, width)), (torch.float32, (worst, k)), targets,
                       (torch.float32, (worst,))]
        if self.task == "multi_label" and not histogram:
            layout += [(torch.float16, (num_samples, k)), (torch.uint8, (num_samples, k))]
        return layout

    def _result(self, state: _State) -> EvaluationResult:
        k, counts = self.num_classes, state.counts.cpu()
        worst = state.worst.to("cpu") if state.worst is not None else None
        result = EvaluationResult(self.task, k, state.num_samples, {}, worst=worst)
        if self.task == "single_label":
            result.confusion_matrix = counts[:k * k].view(k, k)
            scores = single_label_scores(result.confusion_matrix, counts[k * k] if k > 5 else None)
            result.per_class_accuracy = scores.pop("per_class_accuracy")
        else:
            if state.histogram is not None:
                result.scores, result.targets, result.weights = histogram_table(state.histogram)
                ranking = result.scores
            else:
                ranking = state.logits.cpu().float()  # AP from the logits: sigmoid would merge the extremes
                result.scores, result.targets = ranking.sigmoid(), state.targets.cpu()
            result.per_class_ap = average_precision_per_class(ranking, result.targets, result.weights)
            scores = threshold_scores(counts.view(3, k))
            if state.num_samples:
                scores = {"mAP": mean_over_classes_with_positives(result.per_class_ap), **scores}
        if state.num_samples:
            result.metrics = {name: float(value) for name, value in scores.items()}
        return result


def _histogram_bins(num_classes: int, max_score_bytes: int) -> int:
    """The most bins (a power of two in [1024, 65536]) whose int32 counts fit ``max_score_bytes``."""
    fitting = 1 << (max(max_score_bytes // (2 * num_classes * 4), 1).bit_length() - 1)  # a power of two
    return min(max(fitting, _MIN_BINS), _MAX_BINS)


def _pack(device: torch.device, *tensors: torch.Tensor) -> torch.Tensor:
    """``tensors`` (on ``device``) as one flat uint8 buffer: each one's bytes, in order."""
    flat = [tensor.contiguous().view(-1).view(torch.uint8) for tensor in tensors]
    return torch.cat(flat) if flat else torch.zeros(0, dtype=torch.uint8, device=device)


def _layout_bytes(layout: list[tuple[torch.dtype, tuple[int, ...]]]) -> int:
    return sum(math.prod(shape) * dtype.itemsize for dtype, shape in layout)


def _unpack(buffer: torch.Tensor, layout: list[tuple[torch.dtype, tuple[int, ...]]]) -> list[torch.Tensor]:
    """Inverse of :func:`_pack` for one rank's ``layout``; padding after it is ignored."""
    tensors, start = [], 0
    for dtype, shape in layout:
        end = start + math.prod(shape) * dtype.itemsize
        tensors.append(buffer[start:end].clone().view(dtype).view(shape))  # clone: aligned for the dtype
        start = end
    return tensors


__all__ = ["Collectives", "DEFAULT_MAX_SCORE_BYTES", "EvaluationAccumulator", "EvaluationResult",
           "TASKS", "TorchDistributed", "default_collectives"]
