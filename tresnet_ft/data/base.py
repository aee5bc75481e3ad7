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

from .images import ImageLimits, UnreadableImageError, read_image
from .unreadable import (SHARE_SAMPLE, UnreadableLog, dataset_folder, resolve_max_unreadable_share,
                         too_many_unreadable)
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


class DecodedImageDataset(LabelledDataset):
    """Images decoded on each access, from wherever a subclass keeps them (files, Arrow tables).

    Owns what happens when an image cannot be decoded: the item is replaced by the next readable
    one and recorded once in ``self.unreadable``, and too large a share stops the epoch. Subclasses
    give :meth:`_decode` (the image of an item), :meth:`_name` (how an item is named in reports)
    and :meth:`_location` (where the images are, for messages).

    Args:
        targets, classes, task: as for :class:`LabelledDataset`.
        min_decode_size: let JPEGs decode at reduced scale while both sides stay at least this
            (set by the DataModule to the training resolution; None decodes full size).
        skip_unreadable: replace an image that fails to decode by the next readable item and
            record it in ``self.unreadable`` (True), or raise :class:`UnreadableImageError`.
        limits: the most bytes and pixels one image may take; None:
            :meth:`~tresnet_ft.data.images.ImageLimits.resolve` (environment variables, defaults).
        max_unreadable_share: stop (raise :class:`~tresnet_ft.data.unreadable.TooManyUnreadableError`)
            when more than this share of the images asked for are unreadable (see ``unreadable.py``);
            None: ``$TRESNET_FT_MAX_UNREADABLE_SHARE``, else 0.5.
    """

    def __init__(
        self,
        targets: np.ndarray,
        classes: Sequence[str],
        task: Task = "single_label",
        min_decode_size: int | None = None,
        skip_unreadable: bool = True,
        limits: ImageLimits | None = None,
        max_unreadable_share: float | None = None,
    ) -> None:
        super().__init__(targets, classes, task)
        self.min_decode_size = min_decode_size
        self.skip_unreadable = skip_unreadable
        self.limits = limits or ImageLimits.resolve()
        self.max_unreadable_share = resolve_max_unreadable_share(max_unreadable_share)
        self.unreadable = UnreadableLog()
        # Per process (each DataLoader worker has its own copy): the items asked for, how many of
        # them were unreadable, and every item found unreadable with its reason, so that a bad
        # image is decoded once, however many items scan past it for a substitute.
        self._asked, self._asked_unreadable = 0, 0
        self._bad: dict[int, str] = {}

    def _decode(self, item: int) -> np.ndarray:
        """The RGB ``uint8 [H, W, 3]`` image of ``item``; raises :class:`UnreadableImageError`."""
        raise NotImplementedError

    def _name(self, item: int) -> str:
        """How reports name ``item`` (its path, or where it sits in a table)."""
        raise NotImplementedError

    def _location(self) -> str:
        """Where the images are (a folder, a dataset), for messages."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[np.ndarray, Target]:
        self._asked += 1
        count = len(self)
        for offset in range(count):
            item = (index + offset) % count
            image = self._read(item)
            if offset == 0:  # the share counts the items asked for, not the substitutes tried
                self._asked_unreadable += image is None
                self._check_unreadable_share()
            if image is not None:
                return image, self.target(item)
        raise self._share_error(every_file=True)

    def _read(self, item: int) -> np.ndarray | None:
        """The decoded image of ``item``, or None if it is unreadable (recorded once)."""
        if item in self._bad:
            return None
        try:
            return self._decode(item)
        except UnreadableImageError as error:
            if not self.skip_unreadable:
                raise
            self._bad[item] = error.reason
            self.unreadable.record(error.source, error.reason)
            return None

    def _check_unreadable_share(self) -> None:
        judged = self._asked >= min(SHARE_SAMPLE, len(self))
        if judged and self._asked_unreadable > self.max_unreadable_share * self._asked:
            raise self._share_error()

    def _share_error(self, every_file: bool = False) -> Exception:
        examples = [(self._name(item), reason) for item, reason in self._bad.items()]
        bad, asked = (len(self),) * 2 if every_file else (self._asked_unreadable, self._asked)
        return too_many_unreadable(bad, asked, self.max_unreadable_share, self._location(), examples,
                                   every_file)


class ImageFileDataset(DecodedImageDataset):
    """Images decoded from files on each access.

    Args:
        paths: one image file per item.
        targets: ``[N]`` class indices or ``[N, K]`` multi-hot.
        classes: class names in label order.
        task: ``"single_label"`` or ``"multi_label"``.
        min_decode_size, skip_unreadable, limits, max_unreadable_share: see
            :class:`DecodedImageDataset`.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        targets: np.ndarray,
        classes: Sequence[str],
        task: Task = "single_label",
        min_decode_size: int | None = None,
        skip_unreadable: bool = True,
        limits: ImageLimits | None = None,
        max_unreadable_share: float | None = None,
    ) -> None:
        super().__init__(targets, classes, task, min_decode_size, skip_unreadable, limits, max_unreadable_share)
        if len(paths) != len(self.targets):
            raise InvalidValueError(
                f"Expected one target per path, but got {len(paths)} paths and {len(self.targets)} targets."
            )
        self.paths = [str(path) for path in paths]

    def _decode(self, item: int) -> np.ndarray:
        return read_image(self.paths[item], self.min_decode_size, self.limits)

    def _name(self, item: int) -> str:
        return self.paths[item]

    def _location(self) -> str:
        return dataset_folder(self.paths)

    def select(self, indices: np.ndarray) -> ImageFileDataset:
        """A new dataset holding only ``indices`` (class list and options are kept)."""
        subset = ImageFileDataset(
            [self.paths[i] for i in indices],
            self.targets[indices],
            self.classes,
            self.task,
            self.min_decode_size,
            self.skip_unreadable,
            self.limits,
            self.max_unreadable_share,
        )
        subset.unreadable = self.unreadable
        return subset
