"""Stanford Cars (196 classes; 8,144 train / 8,041 test images), from a copy the user supplies.

The original host is gone, so nothing is downloaded. Two published layouts under
``<root>/stanford_cars/`` are read:

* the devkit layout (as torchvision expects it)::

      cars_train/00001.jpg ...            cars_test/00001.jpg ...
      devkit/cars_meta.mat                devkit/cars_train_annos.mat
      cars_test_annos_withlabels.mat      (also accepted inside devkit/)

  A common re-distribution nests the image folders (``cars_train/cars_train/``); that is
  accepted too.
* the all-in-one layout: ``car_ims/000001.jpg ...`` and ``cars_annos.mat`` (with a ``test`` flag
  per image and the class names).

Labels in the ``.mat`` files are 1-based. ``val`` is the official test set (what papers report)
unless ``val_fraction`` asks for a holdout from the training images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import DatasetInfo, ImageFileDataset, check_split
from ..fetch.download import DatasetNotFoundError
from .matfiles import load_mat
from .splits import holdout_mask
from .unreadable import keep_readable

FOLDER = "stanford_cars"
TEST_ANNOS = "cars_test_annos_withlabels.mat"


def prepare_cars(root: Path, download: bool, progress: bool = True) -> None:
    """Check that a supported layout is in place (there is no public download to fall back on)."""
    _find_layout(root / FOLDER)


def describe_cars(root: Path) -> DatasetInfo:
    """Task and class names (read from the annotation files, which must be in place)."""
    folder = root / FOLDER
    layout = _find_layout(folder)
    meta = load_mat(
        folder / ("cars_annos.mat" if layout == "all_in_one" else "devkit/cars_meta.mat")
    )
    return DatasetInfo(
        "single_label", tuple(str(name) for name in np.atleast_1d(meta["class_names"]))
    )


def load_cars(root: Path, split: str, val_fraction: float = 0.0, seed: int = 0) -> ImageFileDataset:
    """Load one split. ``val_fraction`` > 0 holds out that share of train as ``val``."""
    check_split(split)
    folder = root / FOLDER
    classes = describe_cars(root).classes
    source_split = "test" if split == "test" or (split == "val" and not val_fraction) else "train"
    paths, targets = _read_split(folder, source_split)
    if source_split == "train" and val_fraction:
        keys = [Path(path).name for path in paths]
        is_val = holdout_mask(keys, targets, val_fraction, seed)
        chosen = np.flatnonzero(is_val if split == "val" else ~is_val)
        paths, targets = [paths[i] for i in chosen], targets[chosen]
    paths, targets = keep_readable(paths, targets, f"stanford_cars/{split}")
    return ImageFileDataset(paths, targets, classes)


def _read_split(folder: Path, split: str) -> tuple[list[Path], np.ndarray]:
    if _find_layout(folder) == "all_in_one":
        annos = load_mat(folder / "cars_annos.mat")["annotations"]
        chosen = np.asarray(annos["test"], dtype=bool) == (split == "test")
        names = np.atleast_1d(annos["relative_im_path"])[chosen]
        labels = np.atleast_1d(annos["class"])[chosen]
        paths = [folder / str(name) for name in names]
    else:
        annos_file = "devkit/cars_train_annos.mat" if split == "train" else _test_annos(folder)
        annos = load_mat(folder / annos_file)["annotations"]
        images = _image_folder(folder, f"cars_{split}")
        paths = [images / str(name) for name in np.atleast_1d(annos["fname"])]
        labels = np.atleast_1d(annos["class"])
    return paths, np.asarray(labels, dtype=np.int64) - 1


def _find_layout(folder: Path) -> str:
    if (folder / "cars_annos.mat").is_file() and (folder / "car_ims").is_dir():
        return "all_in_one"
    devkit = ["devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_train", "cars_test"]
    missing = [name for name in devkit if not (folder / name).exists()]
    if not (folder / TEST_ANNOS).exists() and not (folder / "devkit" / TEST_ANNOS).exists():
        missing.append(TEST_ANNOS)
    if missing:
        raise DatasetNotFoundError(_missing_message(folder, missing))
    return "devkit"


def _test_annos(folder: Path) -> str:
    return TEST_ANNOS if (folder / TEST_ANNOS).exists() else f"devkit/{TEST_ANNOS}"


def _image_folder(folder: Path, name: str) -> Path:
    nested = folder / name / name  # the common re-distribution that wraps each folder once more
    return nested if nested.is_dir() else folder / name


def _missing_message(folder: Path, missing: list[str]) -> str:
    return (
        f"Dataset 'stanford_cars' not found in {folder}: missing {', '.join(missing)}.\n"
        "Its original host is gone, so it cannot be downloaded automatically. Fix: put a copy "
        f"in one of these layouts inside {folder}:\n"
        "  devkit layout: cars_train/*.jpg, cars_test/*.jpg, devkit/cars_meta.mat,\n"
        f"    devkit/cars_train_annos.mat and {TEST_ANNOS} (next to devkit/ or inside it)\n"
        "  all-in-one layout: car_ims/*.jpg and cars_annos.mat"
    )
