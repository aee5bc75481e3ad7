"""The two dataset shapes every loader returns: images held in memory, or image files on disk.

Items are ``(image, target)``: ``image`` an RGB ``uint8`` array ``[H, W, 3]`` before any
transform; ``target`` an ``int`` class index (single-label) or a multi-hot ``float32`` vector
``[K]`` (multi-label). ``.classes`` lists class names in label order, ``.task`` names the task.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from torch.utils.data import Dataset

from .images import UnreadableImageError, read_image
from .unreadable import UnreadableLog
from ..errors import InvalidValueError

Task = Literal["single_label", "multi_label"]
TASKS: tuple[str, ...] = ("single_label", "multi_label")
SPLITS: tuple[str, ...] = ("train", "val", "test")
Target = int | np.ndarray


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset before it is built."""

    task: Task
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def check_split(split: str, allowed: Sequence[str] = SPLITS) -> str:
    """Return ``split`` if it is one of ``allowed``; otherwise raise a ValueError naming them."""
    if split not in allowed:
        raise InvalidValueError(f"Expected split to be one of {list(allowed)}, but got {split!r}.")
    return split


def check_targets(targets: np.ndarray, num_classes: int, task: Task) -> np.ndarray:
    """Validate targets: ints in ``[0, K)`` ``[N]`` or multi-hot ``[N, K]``; returns them typed."""
    if task == "single_label":
        targets = np.asarray(targets, dtype=np.int64)
        if targets.ndim != 1 or (
            targets.size and (targets.min() < 0 or targets.max() >= num_classes)
        ):
            raise InvalidValueError(
                f"Expected single-label targets [N] in [0, {num_classes}), but got shape "
                f"{targets.shape} with range [{targets.min(initial=0)}, {targets.max(initial=0)}]."
            )
        return targets
    targets = np.asarray(targets, dtype=np.float32)
    if targets.ndim != 2 or targets.shape[1] != num_classes:
        raise InvalidValueError(f"Expected multi-hot targets [N, {num_classes}], but got {targets.shape}.")
    return targets


class LabelledDataset(Dataset):
    """Shared bookkeeping: targets, class names, task, and selecting a subset."""

    def __init__(self, targets: np.ndarray, classes: Sequence[str], task: Task) -> None:
        if task not in TASKS:
            raise InvalidValueError(f"Expected task to be one of {list(TASKS)}, but got {task!r}.")
        self.classes: list[str] = list(classes)
        self.task: Task = task
        self.targets = check_targets(targets, len(self.classes), task)

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(self.task, tuple(self.classes))

    def __len__(self) -> int:
        return len(self.targets)

    def target(self, index: int) -> Target:
        """The target of item ``index`` without decoding its image."""
        if self.task == "single_label":
            return int(self.targets[index])
        return self.targets[index].copy()

    def class_counts(self) -> np.ndarray:
        """Images per class ``[K]`` (for multi-label: images carrying each tag)."""
        if self.task == "single_label":
            return np.bincount(self.targets, minlength=len(self.classes))
        return self.targets.sum(axis=0).astype(np.int64)


class InMemoryImageDataset(LabelledDataset):
    """Images held in one ``uint8`` array ``[N, H, W, 3]`` (CIFAR, generated data)."""

    def __init__(
        self,
        images: np.ndarray,
        targets: np.ndarray,
        classes: Sequence[str],
        task: Task = "single_label",
    ) -> None:
        super().__init__(targets, classes, task)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise InvalidValueError(
                f"Expected uint8 images [N, H, W, 3], but got {images.dtype} {images.shape}."
            )
        if len(images) != len(self.targets):
            raise InvalidValueError(
                f"Expected one target per image, but got {len(images)} images and {len(self.targets)} targets."
            )
        self.images = images

    def __getitem__(self, index: int) -> tuple[np.ndarray, Target]:
        return self.images[index], self.target(index)

    def select(self, indices: np.ndarray) -> InMemoryImageDataset:
        """A new dataset holding only ``indices`` (the class list is kept)."""
        return InMemoryImageDataset(
            self.images[indices], self.targets[indices], self.classes, self.task
        )


class ImageFileDataset(LabelledDataset):
    """Images decoded from files on each access.

    Args:
        paths: one image file per item.
        targets: ``[N]`` class indices or ``[N, K]`` multi-hot.
        classes: class names in label order.
        task: ``"single_label"`` or ``"multi_label"``.
        min_decode_size: let JPEGs decode at reduced scale while both sides stay at least this
            (set by the DataModule to the training resolution; None decodes full size).
        skip_unreadable: replace an image that fails to decode by the next readable item and
            record it in ``self.unreadable`` (True), or raise :class:`UnreadableImageError`.
    """

    max_substitutes = 16  # give up (and raise) after this many unreadable files in a row

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        targets: np.ndarray,
        classes: Sequence[str],
        task: Task = "single_label",
        min_decode_size: int | None = None,
        skip_unreadable: bool = True,
    ) -> None:
        super().__init__(targets, classes, task)
        if len(paths) != len(self.targets):
            raise InvalidValueError(
                f"Expected one target per path, but got {len(paths)} paths and {len(self.targets)} targets."
            )
        self.paths = [str(path) for path in paths]
        self.min_decode_size = min_decode_size
        self.skip_unreadable = skip_unreadable
        self.unreadable = UnreadableLog()

    def __getitem__(self, index: int) -> tuple[np.ndarray, Target]:
        for attempt in range(self.max_substitutes):
            item = (index + attempt) % len(self.paths)
            try:
                return read_image(self.paths[item], self.min_decode_size), self.target(item)
            except UnreadableImageError as error:
                if not self.skip_unreadable:
                    raise
                self.unreadable.record(error.source, error.reason)
        raise UnreadableImageError(
            self.paths[index],
            f"it and the next {self.max_substitutes - 1} files are all unreadable",
        )

    def select(self, indices: np.ndarray) -> ImageFileDataset:
        """A new dataset holding only ``indices`` (class list and options are kept)."""
        subset = ImageFileDataset(
            [self.paths[i] for i in indices],
            self.targets[indices],
            self.classes,
            self.task,
            self.min_decode_size,
            self.skip_unreadable,
        )
        subset.unreadable = self.unreadable
        return subset
