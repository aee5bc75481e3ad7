"""Write the generated quickstart shapes to disk in the layouts users bring their own data in.

Notebooks and examples use these to run the ``folder`` and ``csv`` code paths offline, on
exactly the files a user would have: PNG images (lossless, so every pixel equals the generated
one) in class folders, or listed with their tags in a CSV.

Example:
    >>> root = write_quickstart_folder("shapes", num_images={"train": 10, "val": 5})  # doctest: +SKIP
    >>> load_dataset("folder", root, split="val").classes                             # doctest: +SKIP
    ['circle', 'cross', 'diamond', 'square', 'triangle']
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from .quickstart import SHAPES, QuickstartDataset, check_split_counts
from ..errors import InvalidValueError

SMALL_SIZES = {"train": 100, "val": 25, "test": 10}  # enough for every class, quick to write
TABLE_NAME = "tags.csv"
TAG_SEPARATOR = ";"


def write_quickstart_folder(
    root: str | Path,
    num_images: Mapping[str, int] | None = None,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write single-label shapes as ``root/<split>/<class>/<split>_<index>.png``.

    The ``folder`` dataset reads the result (``ImageDataModule(dataset="folder", root=root)``).
    Classes are balanced (image ``i`` of a split shows shape ``i mod 5``).

    Args:
        root: the folder to create (existing files with the same names are overwritten).
        num_images: images per split, e.g. ``{"train": 40, "val": 10}``; only the splits named
            are written. Default :data:`SMALL_SIZES` (train, val and test).
        image_size: side ``S`` of the square images (at least 16).
        seed: changes every image (the same seed writes the same pixels).

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: an unknown split, no ``train`` split, or fewer training images than classes
            (a class folder without training images cannot be learned).
    """
    sizes = _check_sizes(num_images, minimum_train=len(SHAPES))
    root = Path(root)
    for split, count in sizes.items():
        dataset = QuickstartDataset(split, count, image_size, multi_label=False, seed=seed)
        for index in range(len(dataset)):
            image, label = dataset[index]
            _write_png(root / split / SHAPES[int(label)] / f"{split}_{index:04d}.png", image)
    return root


def write_quickstart_table(
    root: str | Path,
    num_images: Mapping[str, int] | None = None,
    image_size: int = 64,
    multi_label: bool = True,
    seed: int = 0,
) -> Path:
    """Write shapes as ``root/images/<split>_<index>.png`` listed in ``root/tags.csv``.

    The CSV has the columns the ``csv`` dataset reads: ``image`` (relative to the CSV),
    ``labels`` (tags joined with ``;``) and ``split``. Multi-label images hold one to three
    shapes and list each as a tag.

    Args:
        root: the folder to create (existing files with the same names are overwritten).
        num_images: images per split, e.g. ``{"train": 40, "val": 16, "test": 4}``; only the
            splits named are written. Default :data:`SMALL_SIZES`.
        image_size: side ``S`` of the square images (at least 16).
        multi_label: several shapes and tags per image; False writes one tag per row.
        seed: changes every image.

    Returns:
        The path of the CSV file (pass it as the ``root`` of the ``csv`` dataset).

    Raises:
        ValueError: an unknown split, no ``train`` split, or a shape that no training image
            shows (its tag could not be learned; the message says how many images to ask for).
    """
    sizes = _check_sizes(num_images, minimum_train=1 if multi_label else len(SHAPES))
    root = Path(root)
    datasets = {
        split: QuickstartDataset(split, count, image_size, multi_label=multi_label, seed=seed)
        for split, count in sizes.items()
    }
    _check_every_tag_trained(_tag_mask(datasets["train"]), seed)  # before any file is written
    rows = []
    for split, dataset in datasets.items():
        present = _tag_mask(dataset)
        for index in range(len(dataset)):
            image, _ = dataset[index]
            relative = Path("images") / f"{split}_{index:04d}.png"
            _write_png(root / relative, image)
            tags = [SHAPES[k] for k in np.flatnonzero(present[index])]
            rows.append(
                {"image": relative.as_posix(), "labels": TAG_SEPARATOR.join(tags), "split": split}
            )
    table = root / TABLE_NAME
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "labels", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return table


def _check_sizes(num_images: Mapping[str, int] | None, minimum_train: int) -> dict[str, int]:
    sizes = dict(check_split_counts(SMALL_SIZES if num_images is None else num_images))
    if sizes.get("train", 0) < minimum_train:
        raise InvalidValueError(
            f"Expected at least {minimum_train} training image(s) so that every class has one, but got "
            f"num_images={sizes}. Fix: e.g. num_images={{'train': 40, 'val': 10}}."
        )
    bad = {split: count for split, count in sizes.items() if int(count) < 1}
    if bad:
        raise InvalidValueError(
            f"Expected at least one image per split named, but got {bad}. Fix: leave those splits out."
        )
    return {split: int(count) for split, count in sizes.items()}


def _tag_mask(dataset: QuickstartDataset) -> np.ndarray:
    """``[N, K]`` bool: which shapes each image shows."""
    if dataset.multi_label:
        return dataset.targets > 0
    return np.eye(len(SHAPES), dtype=bool)[dataset.targets]


def _check_every_tag_trained(present: np.ndarray, seed: int) -> None:
    missing = [SHAPES[k] for k in np.flatnonzero(~present.any(axis=0))]
    if missing:
        raise InvalidValueError(
            f"No training image shows {missing} with {len(present)} training images (seed {seed}): "
            "their tags could not be learned. Fix: ask for more training images (e.g. 20)."
        )


def _write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):  # OpenCV writes BGR
        raise OSError(f"Could not write {path}.")
