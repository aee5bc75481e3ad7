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

:func:`read_rows` is the one reader of these files: ``tresnet-ft predict`` lists the images of a
table with it too, so both read the same rows the same way (see its docstring for the rules).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
IMAGE_COLUMN = "image"
# What each column holds, for the "Fix:" of a missing-column error.
COLUMN_MEANINGS = {IMAGE_COLUMN: "paths relative to the file", "labels": "the tags"}


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
    table = read_rows(path, (IMAGE_COLUMN, "labels"))
    if not table.rows:
        raise InvalidValueError(f"Expected at least one row in {path}, but it is empty.")
    if not allow_outside_paths:
        _check_inside_folder(path, table.written_images(), table.lines)
    images = table.image_paths()
    missing = [image for image in images if not Path(image).is_file()]
    if missing:
        raise MissingInputError(
            f"{len(missing)} image(s) listed in {path} do not exist: {describe_paths(missing)}. "
            "Fix: correct the paths (relative to the file's folder) or remove those rows."
        )
    return TagTable(path, images, _split_tags(table.rows), _read_splits(table.rows, path))


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


@dataclass(frozen=True)
class TableRows:
    """The rows of a CSV or JSONL file as written, each with a non-empty image path."""

    path: Path
    rows: list[dict[str, Any]]  # column -> cell (CSV: strings; JSONL: any JSON value)
    lines: list[int]  # the line of the file each row ends on, for messages

    def written_images(self) -> list[str]:
        """The ``image`` cells, stripped, as written."""
        return [str(row[IMAGE_COLUMN]).strip() for row in self.rows]

    def image_paths(self) -> list[str]:
        """Absolute image paths: relative ones start at the file's folder (an absolute one stays),
        resolved, so ``../x.jpg`` and symlinked folders name the file that is actually read."""
        return [str((self.path.parent / image).resolve()) for image in self.written_images()]


def read_rows(path: Path, columns: Sequence[str] = (IMAGE_COLUMN,)) -> TableRows:
    """Read a ``.jsonl`` file (one JSON object per line; blank lines skipped) or, for any other
    suffix, a CSV file with a header row (UTF-8, with or without a byte-order mark).

    The rules, the same for training and prediction: every row has every column in ``columns``
    (a CSV's header names them; in JSONL every line must, not only the first); every row's
    ``image`` cell is a non-empty path; an empty file has no rows (not an error here).

    Raises:
        ValueError: a line is not a JSON object, a column is missing, or an image cell is empty
            (the message names the line).
    """
    path = Path(path)
    rows, lines = _read_jsonl(path, columns) if path.suffix.lower() == ".jsonl" else _read_csv(path, columns)
    for row, line in zip(rows, lines):
        value = row.get(IMAGE_COLUMN)
        if value is None or not str(value).strip():
            raise InvalidValueError(
                f"Expected an image path in the {IMAGE_COLUMN!r} column on line {line} of {path}, but got "
                f"{value!r}. Fix: fill it in or remove the row."
            )
    return TableRows(path, rows, lines)


def _missing_column(path: Path, column: str, present: Sequence[Any], columns: Sequence[str],
                    line: int | None = None) -> InvalidValueError:
    article = "an" if column[:1].lower() in "aeiou" else "a"
    where = f" on line {line}" if line is not None else ""
    names = " and ".join(f"{name!r} ({COLUMN_MEANINGS[name]})" if name in COLUMN_MEANINGS else repr(name)
                         for name in columns)
    return InvalidValueError(
        f"Expected {article} {column!r} column in {path}{where}, but got columns "
        f"{sorted(str(name) for name in present)}. Fix: name the columns {names}."
    )


def _read_csv(path: Path, columns: Sequence[str]) -> tuple[list[dict], list[int]]:
    """The rows and the line each one ends on (a quoted cell may span lines)."""
    rows, lines = [], []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames  # None: an empty file, which simply has no rows
        missing = [column for column in columns if header is not None and column not in header]
        if missing:
            raise _missing_column(path, missing[0], header or [], columns)
        for row in reader:
            rows.append(row)
            lines.append(reader.line_num)
    return rows, lines


def _read_jsonl(path: Path, columns: Sequence[str]) -> tuple[list[dict], list[int]]:
    rows, lines = [], []
    # Split on newlines only (not str.splitlines): JSON strings may hold U+2028 and the like.
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise InvalidValueError(
                    f"Expected one JSON object per line in {path}, but line {number} is not: {error}."
                ) from error
            if not isinstance(row, dict):
                raise InvalidValueError(
                    f"Expected one JSON object per line in {path}, but line {number} is a "
                    f"{type(row).__name__}. Fix: write each line as {{\"{IMAGE_COLUMN}\": \"path/to.jpg\", ...}}."
                )
            for column in columns:
                if column not in row:
                    raise _missing_column(path, column, list(row), columns, line=number)
            rows.append(row)
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
