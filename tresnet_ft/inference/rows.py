"""Logits → prediction rows, and writers that append them to a CSV or JSONL file as they come.

Rows per task (probabilities and scores rounded to 6 decimals):

* single-label: ``path``, the top-k classes with their softmax probabilities, most likely first.
  CSV columns ``path, top1_label, top1_prob, ..., topk_label, topk_prob``; JSONL
  ``{"path": ..., "labels": [...], "probabilities": [...]}``.
* multi-label: ``path``, the tags whose sigmoid score is strictly above their threshold (the rule
  the thresholds were tuned with), highest score first. CSV columns ``path, tags, scores`` with
  the values joined by ``;`` (the tag separator of :mod:`tresnet_ft.data.tabular`), empty when no
  tag passes; JSONL ``{"path": ..., "tags": [...], "scores": [...]}``.
"""
from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import torch

from ..outputs import atomic_output

OUTPUT_SUFFIXES = (".csv", ".jsonl")
EXAMPLE_OUTPUT = "predictions.csv"  # the file name that fixes in error messages suggest
DECIMALS = 6
TAG_SEPARATOR = ";"

Row = dict[str, Any]


def top_k_rows(paths: Sequence[str], logits: torch.Tensor, classes: Sequence[str], k: int) -> list[Row]:
    """Single-label rows from logits ``[B, K]``: the ``min(k, K)`` most likely classes each."""
    probabilities = logits.float().softmax(dim=1)
    top_p, top_i = probabilities.topk(min(k, len(classes)), dim=1)  # sorted, largest first
    return [{"path": path, "labels": [classes[i] for i in indices],
             "probabilities": [round(p, DECIMALS) for p in probs]}
            for path, indices, probs in zip(paths, top_i.tolist(), top_p.tolist())]


def thresholded_rows(paths: Sequence[str], logits: torch.Tensor, classes: Sequence[str],
                     thresholds: torch.Tensor) -> list[Row]:
    """Multi-label rows from logits ``[B, K]``: tags with ``sigmoid > thresholds`` (``[K]``)."""
    scores = logits.float().sigmoid()
    rows = []
    for path, row_scores, passed in zip(paths, scores.tolist(), (scores > thresholds).tolist()):
        chosen = sorted((i for i, ok in enumerate(passed) if ok), key=lambda i: -row_scores[i])
        rows.append({"path": path, "tags": [classes[i] for i in chosen],
                     "scores": [round(row_scores[i], DECIMALS) for i in chosen]})
    return rows


class PredictionWriter:
    """Appends rows to ``path`` (``.csv`` or ``.jsonl``), flushing after each batch so a long run's
    results are on disk as it goes, in a hidden ``.<name>.partial`` beside ``path``
    (:func:`tresnet_ft.outputs.atomic_output`). Use as a context manager: leaving it normally
    renames the finished file over ``path``; an error, or a killed run, leaves ``path`` as it was
    (an old file, or none), never a short file that looks complete."""

    def __init__(self, path: Path, task: str, top_k: int) -> None:
        self.path, self.task, self.top_k = Path(path), task, top_k
        self.format = self.path.suffix.lower()
        self._handle: IO[str] | None = None
        self._csv: Any = None
        self._output = contextlib.ExitStack()

    def __enter__(self) -> PredictionWriter:
        # An error before this returns unwinds the stack with it, so the partial file goes too.
        with contextlib.ExitStack() as stack:
            partial = stack.enter_context(atomic_output(self.path, example_name=EXAMPLE_OUTPUT))
            self._handle = stack.enter_context(open(partial, "w", newline="", encoding="utf-8"))
            if self.format == ".csv":
                self._csv = csv.writer(self._handle)
                self._csv.writerow(self._csv_header())
                self._handle.flush()  # a run that finds nothing readable still leaves a valid file
            self._output = stack.pop_all()
        return self

    def __exit__(self, *exc_info: Any) -> bool | None:
        # Closes the file, then renames it into place, or on an error removes it.
        return self._output.__exit__(*exc_info)

    def write(self, rows: Sequence[Row]) -> None:
        assert self._handle is not None, "use PredictionWriter as a context manager"
        for row in rows:
            if self._csv is not None:
                self._csv.writerow(self._csv_row(row))
            else:
                self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._handle.flush()

    def _csv_header(self) -> list[str]:
        if self.task == "multi_label":
            return ["path", "tags", "scores"]
        pairs = ([f"top{rank}_label", f"top{rank}_prob"] for rank in range(1, self.top_k + 1))
        return ["path", *(name for pair in pairs for name in pair)]

    def _csv_row(self, row: Row) -> list[Any]:
        if self.task == "multi_label":
            return [row["path"], TAG_SEPARATOR.join(row["tags"]),
                    TAG_SEPARATOR.join(str(score) for score in row["scores"])]
        cells = [row["path"]]
        for label, probability in zip(row["labels"], row["probabilities"]):
            cells += [label, probability]
        return cells
