"""Logits → the JSON answer of ``POST /predict``, through the same row builders as ``tresnet-ft predict``
(:mod:`tresnet_ft.inference.rows`), so a served answer equals the predicted row for the same image.

One answer per image, in upload order::

    single-label: {"name": "cat.jpg", "labels": ["cat", "dog", ...], "scores": [0.91, 0.05, ...]}
                  (the top-k classes by softmax probability, most likely first)
    multi-label:  {"name": "cat.jpg", "labels": ["sky", "tree"], "scores": [0.97, 0.62],
                   "thresholds": [0.41, 0.55]}
                  (the tags whose sigmoid score is strictly above their tuned threshold, highest
                  first, with the threshold each one passed)
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..classifier.checkpoint import ClassifierInfo
from ..inference.rows import DECIMALS, thresholded_rows, top_k_rows


def answers(info: ClassifierInfo, names: Sequence[str], logits: torch.Tensor, top_k: int,
            thresholds: torch.Tensor) -> list[dict[str, Any]]:
    """One answer per row of ``logits`` ``float32 [B, K]``; ``thresholds`` ``[K]`` is used for multi-label."""
    if info.task == "multi_label":
        index = {name: position for position, name in enumerate(info.classes)}
        return [{"name": row["path"], "labels": row["tags"], "scores": row["scores"],
                 "thresholds": [round(float(thresholds[index[tag]]), DECIMALS) for tag in row["tags"]]}
                for row in thresholded_rows(names, logits, info.classes, thresholds)]
    return [{"name": row["path"], "labels": row["labels"], "scores": row["probabilities"]}
            for row in top_k_rows(names, logits, info.classes, top_k)]


def model_description(info: ClassifierInfo, thresholds: torch.Tensor, runtime: str, top_k: int) -> dict[str, Any]:
    """What ``GET /info`` returns: the task, classes, input size, runtime, and the thresholds
    (multi-label) or the default top-k (single-label)."""
    description: dict[str, Any] = {"task": info.task, "classes": list(info.classes), "arch": info.arch,
                                   "image_size": info.image_size, "runtime": runtime}
    if info.task == "multi_label":
        description["thresholds"] = {name: round(float(value), DECIMALS)
                                     for name, value in zip(info.classes, thresholds)}
    else:
        description["top_k"] = top_k
    return description
