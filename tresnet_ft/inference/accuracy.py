"""The images an int8 export is calibrated and judged on, and the metric it is judged by.

A checkpoint written by ``tresnet-ft fit`` holds the DataModule's settings (Lightning's
``datamodule_hyper_parameters``): the dataset's name, its options, its holdout fraction and seed.
:func:`checkpoint_dataset` reopens the same splits from them, trusting only what cannot point
anywhere: a registered dataset name, and options that are plain numbers or flags. The data's
location is never taken from the file (a checkpoint must not decide what is read): a named dataset
(CIFAR, Flowers-102, ...) is read from the default data root (``$TRESNET_FT_DATA``) unless
``data_root`` says otherwise, and your own folder or table is read only from the ``data_root``
you give, which the error suggests from the checkpoint when it is missing. Nothing is downloaded.

The metric is the one training reports: top-1 accuracy (single-label) or mAP over the classes
with positives (multi-label), in percent.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..classifier.average_precision import average_precision_per_class
from ..classifier.checkpoint import ClassifierInfo
from ..data.preprocessing import is_finite_number, short_repr
from ..data.registry import DATASETS, load_dataset
from ..data.workers import default_num_workers, single_threaded_opencv
from ..errors import InvalidValueError
from ..models.weights import read_checkpoint

DATAMODULE_KEY = "datamodule_hyper_parameters"  # where Lightning saves the DataModule's arguments
# Options a checkpoint may set: numbers and flags that shape the splits, never a path or a switch
# that widens what may be read (such as the tables' allow_outside_paths).
_TRUSTED_OPTIONS = ("val_fraction", "seed", "multi_label", "num_images", "image_size")


@dataclass(frozen=True)
class DatasetSource:
    """Where the labelled images are: a registered dataset ``name``, its ``root`` (None: the default
    data root of a named dataset) and its loader ``options`` (e.g. ``{"val_fraction": 0.1}``)."""

    name: str
    root: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


def checkpoint_dataset(checkpoint: str | Path, data_root: str | Path | None = None) -> DatasetSource:
    """The dataset ``checkpoint`` was trained on, from its saved DataModule settings (module doc).

    Raises:
        InvalidValueError: the checkpoint holds no DataModule settings (e.g. written by
            ``write_classifier``), names no registered dataset, or needs ``data_root`` to find your data.
    """
    saved = read_checkpoint(checkpoint).get(DATAMODULE_KEY)
    name = saved.get("dataset") if isinstance(saved, Mapping) else None
    if not isinstance(name, str) or name not in DATASETS:
        raise InvalidValueError(
            f"{checkpoint} does not say which dataset it was trained on (no {DATAMODULE_KEY!r} with a registered "
            f"dataset: got {short_repr(name)}), so there are no training images to calibrate on and no "
            "validation split to check the int8 model against. Fix: use the checkpoint `tresnet-ft fit` wrote, "
            "or call quantize_model(..., dataset=DatasetSource(...)) from Python.")
    options = {key: value for key, value in (saved.get("dataset_options") or {}).items()
               if key in _TRUSTED_OPTIONS and (isinstance(value, bool) or is_finite_number(value))}
    for key in ("val_fraction", "seed"):
        if saved.get(key) is not None and is_finite_number(saved[key]):
            options.setdefault(key, saved[key])
    if data_root is None and DATASETS[name].root_is_data:
        saved_root = saved.get("root")
        hint = f" (it was trained on {saved_root[:300]!r})" if isinstance(saved_root, str) and saved_root else ""
        raise InvalidValueError(
            f"{checkpoint} was trained on your own {name!r} data{hint}; where that data is now is yours to say. "
            "Fix: --data-root PATH (the folder or CSV/JSONL file it was trained on).")
    return DatasetSource(name, None if data_root is None else str(data_root), options)


class _EvalImages(Dataset):
    """``(uint8 [3, S, S], target)`` items: a split's images through the checkpoint's eval transform."""

    def __init__(self, images: Any, transform: Callable[[np.ndarray], torch.Tensor]) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        image, target = self.images[index]
        return self.transform(image), target


def split_images(source: DatasetSource, split: str, info: ClassifierInfo) -> Dataset:
    """One split of ``source`` as the checkpoint's eval transform prepares it; items ``(uint8 [3, S, S], target)``.

    Raises:
        InvalidValueError: the dataset's classes or task differ from the checkpoint's.
        FileNotFoundError: the data is not on disk (nothing is downloaded).
    """
    images = load_dataset(source.name, source.root, split, download=False, progress=False, **dict(source.options))
    if list(images.classes) != list(info.classes) or images.task != info.task:
        raise InvalidValueError(
            f"Expected {source.name} at {source.root or 'the default data root'} to hold the checkpoint's "
            f"{info.task} classes {short_repr(info.classes)}, but its {split} split has {images.task} classes "
            f"{short_repr(list(images.classes))}. Fix: --data-root pointing at the data it was trained on.")
    return _EvalImages(images, info.eval_transform(output="uint8"))


def labelled_batches(dataset: Dataset, batch_size: int = 32,
                     num_workers: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(uint8 [B, 3, S, S], targets)`` batches of ``dataset`` in order, decoded by worker processes."""
    workers = default_num_workers() if num_workers is None else num_workers
    if workers > 0:
        single_threaded_opencv()
    yield from DataLoader(dataset, batch_size=batch_size, num_workers=min(workers, len(dataset)))


def evaluate(logits_of: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, task: str,
             batch_size: int = 32, num_workers: int | None = None) -> float:
    """Top-1 (single-label) or mAP (multi-label) of ``logits_of`` (``uint8 [B, 3, S, S]`` → ``[B, K]``)
    over ``dataset``, in percent."""
    outputs, targets = [], []
    for images, target in labelled_batches(dataset, batch_size, num_workers):
        outputs.append(logits_of(images).float())
        targets.append(target)
    scores, truth = torch.cat(outputs), torch.cat(targets)
    if task == "multi_label":
        return 100.0 * float(mean_average_precision(scores, truth))
    return 100.0 * float((scores.argmax(dim=1) == truth).float().mean())


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mAP of ``[N, K]`` scores against ``[N, K]`` {0, 1} targets, over the classes with a positive
    (:func:`~tresnet_ft.classifier.average_precision.average_precision_per_class`, as in training)."""
    return average_precision_per_class(scores, targets).nanmean()
