"""Images listed in a CSV or JSONL file, with one or several tags each.

Columns (CSV header or JSONL keys): ``image`` (a path relative to the file's folder), ``labels``
and optionally ``split`` (``train``/``val``/``test``). An image path may not leave the file's folder
(an absolute path elsewhere, or ``..`` climbing out): a table from someone else cannot make
training read arbitrary files. ``allow_outside_paths=True`` (``dataset_options``) lifts this for
your own tables; the check is on the path as written, so symlinks inside the folder are followed. In a CSV, the tags in
``labels`` are split on ``;`` if any row uses it, else on ``|``, else on whitespace; in JSONL
``labels`` may also be a list. If any row has more or fewer than one tag, the task is multi-label.
Without a ``split`` column, ``val`` is a deterministic holdout. Missing image files are an error
before training that lists them.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import DatasetInfo, ImageFileDataset, Task, check_split
from .splits import holdout_mask
from .unreadable import describe_paths, keep_readable
from ..errors import InvalidValueError, MissingInputError

SPLIT_ALIASES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
TABLE_SUFFIXES = (".csv", ".jsonl")


@dataclass
class TagTable:
    """The parsed file: one entry per row."""

    source: Path
    images: list[str]  # absolute paths
    tags: list[list[str]]
    splits: list[str] | None  # normalised split per row, if the file has a split column


def resolve_table(root: Path) -> Path:
    """``root`` itself if it is a table file, else the single ``.csv``/``.jsonl`` in that folder."""
    root = Path(root)
    if root.is_file():
        return root
    if not root.is_dir():
        raise MissingInputError(
            f"Expected a .csv or .jsonl file (or a folder with one) at {root}, but it does not exist."
        )
    found = sorted(path for path in root.iterdir() if path.suffix.lower() in TABLE_SUFFIXES)
    if len(found) != 1:
        raise InvalidValueError(
            f"Expected exactly one .csv or .jsonl file in {root}, but found {[p.name for p in found]}. "
            "Fix: pass the file itself as root."
        )
    return found[0]


def read_table(root: Path, allow_outside_paths: bool = False) -> TagTable:
    """Parse the file and check every listed image exists (and stays inside the file's folder).

    Raises:
        ValueError: a required column is missing, a split value is unknown, or an image path
            leaves the file's folder while ``allow_outside_paths`` is False.
        FileNotFoundError: rows point to missing images (the first few are listed).
    """
    path = resolve_table(root)
    rows, lines = _read_jsonl(path) if path.suffix.lower() == ".jsonl" else _read_csv(path)
    if not rows:
        raise InvalidValueError(f"Expected at least one row in {path}, but it is empty.")
    for column in ("image", "labels"):
        if column not in rows[0]:
            raise InvalidValueError(
                f"Expected a {column!r} column in {path}, but got columns {sorted(rows[0])}. Fix: "
                "name the columns 'image' (paths relative to the file) and 'labels' (the tags)."
            )
    written = [str(row["image"]).strip() for row in rows]
    if not allow_outside_paths:
        _check_inside_folder(path, written, lines)
    images = [str((path.parent / image).resolve()) for image in written]
    missing = [image for image in images if not Path(image).is_file()]
    if missing:
        raise MissingInputError(
            f"{len(missing)} image(s) listed in {path} do not exist: {describe_paths(missing)}. "
            "Fix: correct the paths (relative to the file's folder) or remove those rows."
        )
    return TagTable(path, images, _split_tags(rows), _read_splits(rows, path))


def describe_table(
    root: Path, multi_label: bool | None = None, allow_outside_paths: bool = False
) -> DatasetInfo:
    """Task and class names from the training rows."""
    table = read_table(root, allow_outside_paths)
    train = _split_rows(table, "train", 0.1, 0)
    return DatasetInfo(_task(table, multi_label), tuple(_classes(table, train)))


def prepare_table(root: Path, download: bool = False, progress: bool = True) -> None:
    """Check the table parses and its images exist (nothing to download). Where the images may
    live is checked by :func:`describe_table` and :func:`load_table`, which get the options."""
    read_table(root, allow_outside_paths=True)


def load_table(
    root: Path,
    split: str,
    val_fraction: float = 0.1,
    seed: int = 0,
    multi_label: bool | None = None,
    allow_outside_paths: bool = False,
) -> ImageFileDataset:
    """Load one split of a CSV/JSONL tag table.

    Args:
        val_fraction: holdout share for ``val`` when the file has no ``split`` column.
        seed: changes which rows the holdout picks.
        multi_label: force the task; None decides from the tag counts.
        allow_outside_paths: accept image paths outside the file's folder (absolute, or ``..``).
    """
    check_split(split)
    table = read_table(root, allow_outside_paths)
    task = _task(table, multi_label)
    train_rows = _split_rows(table, "train", val_fraction, seed)
    classes = _classes(table, train_rows)
    rows = train_rows if split == "train" else _split_rows(table, split, val_fraction, seed)
    _check_known_tags(table, rows, classes, split)
    targets = _targets(table, rows, classes, task)
    paths = [table.images[i] for i in rows]
    paths, targets = keep_readable(paths, targets, f"{table.source.name}/{split}")
    return ImageFileDataset(paths, targets, classes, task)


def _read_csv(path: Path) -> tuple[list[dict], list[int]]:
    """The rows and the line each one ends on."""
    rows, lines = [], []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            rows.append(row)
            lines.append(reader.line_num)
    return rows, lines


def _read_jsonl(path: Path) -> tuple[list[dict], list[int]]:
    rows, lines = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise InvalidValueError(
                    f"Expected one JSON object per line in {path}, but line {number} is not: {error}."
                ) from error
            lines.append(number)
    return rows, lines


def _check_inside_folder(path: Path, images: list[str], lines: list[int]) -> None:
    """Refuse image paths that leave ``path``'s folder, as written (before following symlinks)."""
    folder = path.parent.resolve()
    outside = [
        (line, image)
        for line, image in zip(lines, images)
        if not Path(os.path.normpath(folder / image)).is_relative_to(folder)
    ]
    if outside:
        line, image = outside[0]
        more = f" (and {len(outside) - 1} more row(s))" if len(outside) > 1 else ""
        raise InvalidValueError(
            f"Line {line} of {path} names image {image!r}, which is outside the table's folder "
            f"{folder}{more}. Image paths must stay inside it. Fix: move the images under that "
            "folder, or, for a table you trust, allow it: dataset_options {allow_outside_paths: true} "
            "(--data.dataset_options '{\"allow_outside_paths\": true}')."
        )


def _split_tags(rows: list[dict]) -> list[list[str]]:
    cells = [row["labels"] for row in rows]
    texts = [cell for cell in cells if isinstance(cell, str)]
    separator = next((sep for sep in (";", "|") if any(sep in text for text in texts)), None)
    tags = []
    for cell in cells:
        if isinstance(cell, list):
            parts = [str(tag) for tag in cell]
        else:
            parts = str(cell or "").split(separator) if separator else str(cell or "").split()
        tags.append(sorted({part.strip() for part in parts if part.strip()}))
    return tags


def _read_splits(rows: list[dict], path: Path) -> list[str] | None:
    if "split" not in rows[0]:
        return None
    splits = []
    for row in rows:
        value = str(row.get("split") or "").strip().lower()
        if value not in SPLIT_ALIASES:
            raise InvalidValueError(
                f"Expected split values in {sorted(SPLIT_ALIASES)} in {path}, but got {row.get('split')!r} "
                f"(image {row['image']})."
            )
        splits.append(SPLIT_ALIASES[value])
    return splits


def _task(table: TagTable, multi_label: bool | None) -> Task:
    if multi_label is None:
        multi_label = any(len(tags) != 1 for tags in table.tags)
    return "multi_label" if multi_label else "single_label"


def _split_rows(table: TagTable, split: str, fraction: float, seed: int) -> np.ndarray:
    if table.splits is not None:
        rows = np.flatnonzero(np.array(table.splits) == split)
        if not len(rows):
            raise InvalidValueError(
                f"Expected rows with split={split!r} in {table.source}, but there are none."
            )
        return rows
    if split == "test":
        raise InvalidValueError(
            f"Expected a 'split' column in {table.source} to load split 'test', but there is none."
        )
    keys = [os.path.relpath(image, table.source.parent) for image in table.images]
    is_val = holdout_mask(keys, _strata(table), fraction, seed)
    return np.flatnonzero(is_val if split == "val" else ~is_val)


def _strata(table: TagTable) -> np.ndarray:
    """Single-label rows are stratified by tag ``[N]``; multi-label rows by hash alone ``[N, 1]``."""
    if all(len(tags) == 1 for tags in table.tags):
        return np.unique([tags[0] for tags in table.tags], return_inverse=True)[1]
    return np.zeros((len(table.tags), 1))


def _classes(table: TagTable, train_rows: np.ndarray) -> list[str]:
    classes = sorted({tag for i in train_rows for tag in table.tags[i]})
    if not classes:
        raise InvalidValueError(f"Expected tags in the training rows of {table.source}, but found none.")
    return classes


def _check_known_tags(table: TagTable, rows: np.ndarray, classes: list[str], split: str) -> None:
    unknown = sorted({tag for i in rows for tag in table.tags[i]} - set(classes))
    if unknown:
        raise InvalidValueError(
            f"Tags {unknown} appear in the {split} rows of {table.source} but in no training row: "
            "a model cannot learn them. Fix: add training rows with them or remove them."
        )


def _targets(table: TagTable, rows: np.ndarray, classes: list[str], task: Task) -> np.ndarray:
    index = {name: i for i, name in enumerate(classes)}
    if task == "single_label":
        bad = [table.images[i] for i in rows if len(table.tags[i]) != 1]
        if bad:
            raise InvalidValueError(
                f"Expected exactly one tag per row for single-label data, but these rows differ: {describe_paths(bad)}."
            )
        return np.array([index[table.tags[i][0]] for i in rows], dtype=np.int64)
    targets = np.zeros((len(rows), len(classes)), dtype=np.float32)
    for row, i in enumerate(rows):
        targets[row, [index[tag] for tag in table.tags[i]]] = 1.0
    return targets
