"""Your own images in class sub-folders.

Two layouts are read (images may sit in nested folders; hidden files and folders, names starting
with ``.``, are ignored by the rule :mod:`tresnet_ft.data.files` shares with prediction)::

    root/train/<class>/*.jpg   root/val/<class>/...   [root/test/<class>/...]
    root/<class>/*.jpg         (val is then a deterministic stratified holdout)

Class names come from the training folders, sorted. A class folder with no readable image, a
class that appears only in ``val``/``test``, or a training folder with a single class (nothing to
tell it from) is an error that names it and the folder. Long lists of names are cut to the first 10.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import InvalidValueError, MissingInputError
from .base import DatasetInfo, ImageFileDataset, check_split
from .files import image_files, visible_subfolders
from .splits import describe_names, holdout_mask
from .unreadable import keep_readable

log = logging.getLogger(__name__)

SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


def describe_folder(root: Path) -> DatasetInfo:
    """Task and class names (the training class folders)."""
    train_dir = _split_dir(Path(root), "train")
    classes = _class_names(train_dir)
    _check_several_classes(classes, train_dir)
    return DatasetInfo("single_label", tuple(classes))


def prepare_folder(root: Path, download: bool = False, progress: bool = True) -> None:
    """Check the folder exists and has class folders (nothing to download). How many classes is
    for :func:`describe_folder` and :func:`load_folder`, which name a class seen only in val/ first."""
    _class_names(_split_dir(Path(root), "train"))


def load_folder(
    root: Path, split: str, val_fraction: float = 0.1, seed: int = 0
) -> ImageFileDataset:
    """Load one split of an image folder.

    Args:
        root: the folder holding ``train/`` (and ``val/``, ``test/``) or the class folders.
        split: ``"train"``, ``"val"`` or ``"test"``.
        val_fraction: share of each class held out as ``val`` when there is no ``val/`` folder.
        seed: changes which images the holdout picks.
    """
    check_split(split)
    root = Path(root)
    train_dir = _split_dir(root, "train")
    classes = _class_names(train_dir)
    own_dir = _split_dir(root, split) if split != "train" else train_dir
    separate = own_dir is not None and own_dir != train_dir
    if separate:  # first: a class only in val/ is the more specific mistake to name
        _check_no_unknown_classes(own_dir, classes, train_dir)
    _check_several_classes(classes, train_dir)
    if separate:
        paths, targets = _list_images(own_dir, classes, split)
        return _dataset(paths, targets, classes, f"folder/{split}")
    if split == "test":
        raise MissingInputError(
            f"Expected a test/ folder in {root} for split 'test', but there is none."
        )
    paths, targets = _list_images(train_dir, classes, "train")
    if split == "train" and _split_dir(root, "val") not in (None, train_dir):
        return _dataset(paths, targets, classes, "folder/train")
    keys = [os.path.relpath(path, train_dir) for path in paths]
    is_val = holdout_mask(keys, targets, val_fraction, seed, source=str(train_dir))
    chosen = np.flatnonzero(is_val if split == "val" else ~is_val)
    return _dataset([paths[i] for i in chosen], targets[chosen], classes, f"folder/{split}")


def _split_dir(root: Path, split: str) -> Path | None:
    """The folder holding ``split``'s class folders: ``root/<split>``, or ``root`` for train."""
    if not root.is_dir():
        raise MissingInputError(f"Expected an image folder at {root}, but it does not exist.")
    has_split_folders = (root / "train").is_dir()
    if not has_split_folders:
        return root if split == "train" else None
    for name in SPLIT_FOLDERS[split]:
        if (root / name).is_dir():
            return root / name
    return None


def _class_names(folder: Path | None) -> list[str]:
    assert folder is not None  # train always resolves (root itself at worst)
    names = [entry.name for entry in visible_subfolders(folder)]
    if not names:
        raise InvalidValueError(
            f"Expected class sub-folders in {folder} (e.g. {folder}/cat/001.jpg), but found none."
        )
    return names


def _check_several_classes(classes: list[str], train_dir: Path) -> None:
    """One class is nothing to learn: every image would get it, whatever it shows."""
    if len(classes) < 2:
        raise InvalidValueError(
            f"Expected at least 2 class folders in {train_dir} for single-label training, but found one: "
            f"{classes[0]!r}. Fix: add a folder for each other class ({train_dir}/<class>/); to tell "
            f"{classes[0]!r} from everything else, add a folder of other images (e.g. {train_dir}/other/)."
        )


def _check_no_unknown_classes(folder: Path, classes: list[str], train_dir: Path) -> None:
    unknown = sorted(set(_class_names(folder)) - set(classes))
    if unknown:
        raise InvalidValueError(
            f"Classes {describe_names(unknown)} have images in {folder} but no folder in {train_dir}: a model "
            f"cannot learn them. Fix: add training images under {train_dir}/<class>/ or remove them."
        )


def _list_images(folder: Path, classes: list[str], split: str) -> tuple[list[str], np.ndarray]:
    paths, targets = [], []
    for label, name in enumerate(classes):
        class_dir = folder / name
        found = image_files(class_dir) if class_dir.is_dir() else []
        paths += found
        targets += [label] * len(found)
    if not paths:
        raise InvalidValueError(f"Expected images in the class folders of {folder}, but found none.")
    return paths, np.asarray(targets, dtype=np.int64)


def _dataset(
    paths: list[str], targets: np.ndarray, classes: list[str], name: str
) -> ImageFileDataset:
    paths, targets = keep_readable(paths, targets, name)
    if name.endswith("/train"):
        empty = [
            classes[i] for i in np.flatnonzero(np.bincount(targets, minlength=len(classes)) == 0)
        ]
        if empty:
            raise InvalidValueError(
                f"{name}: classes {describe_names(empty)} have no readable training image. Fix: add images to "
                "those class folders or remove the folders."
            )
    return ImageFileDataset(paths, targets, classes)
