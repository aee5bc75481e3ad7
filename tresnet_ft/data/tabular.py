"""Images listed in a CSV or JSONL file, with one or several tags each.

Columns (CSV header or JSONL keys): ``image`` (a path relative to the file's folder), ``labels``
and optionally ``split`` (``train``/``val``/``test``). An image path may not leave the file's folder
(an absolute path elsewhere, or ``..`` climbing out): a table from someone else cannot make
training read arbitrary files. ``allow_outside_paths=True`` (``dataset_options``) lifts this for
your own tables; the check is on the path as written, so symlinks inside the folder are followed.
Missing image files are an error before training that lists them. The file itself is read by
:func:`~tresnet_ft.data.table_rows.read_rows`, strictly (encoding, quotes, cell counts: see
:mod:`tresnet_ft.data.table_rows`), the same way ``tresnet-ft predict`` reads it.

Labels, the same in both formats:

* A CSV cell is text: it is split on ``;`` if any row uses it, else on ``|``, else on whitespace
  (with ``multi_label=False``, never on whitespace, so a class name may hold spaces). A JSONL
  ``labels`` value may be such a string, an integer, a list of strings and integers, or null (no
  tag). An integer is the class named by its digits: JSON ``0`` and CSV ``0`` are both the class
  ``"0"``. Classes are sorted by name, as folder names are, except that when every class is a
  whole number they are sorted by value: labels ``0 .. K-1`` are then class ids (label ``k`` is
  output ``k``). Anything else (a float, a bool, an
  object, a nested list) is an error naming the line.
* Task: one tag on every row is single-label; any row with no tag or several makes the table
  multi-label, unless ``multi_label`` says which. When nothing but an empty cell or a cell split on
  whitespace makes it multi-label (no row lists several tags with ``;``/``|`` or a JSON list), a
  warning names those lines: it is often a single-label table with a hole or a class name with a
  space. ``multi_label=True`` or ``False`` silences it.
* Single-label training needs at least 2 classes (an error naming the table otherwise).

Without a ``split`` column, ``val`` is a deterministic holdout, stratified by class or tag and never
empty (:func:`tresnet_ft.data.splits.holdout_mask`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import DatasetInfo, ImageFileDataset, Task, check_split
from .splits import describe_names, holdout_mask
from .table_rows import IMAGE_COLUMN, TABLE_SUFFIXES, TableRows, read_rows
from .unreadable import describe_paths, keep_readable
from ..errors import InvalidValueError, MissingInputError

__all__ = ["IMAGE_COLUMN", "TABLE_SUFFIXES", "TableRows", "TagTable", "describe_table", "load_table",
           "prepare_table", "read_rows", "read_table", "resolve_table"]

log = logging.getLogger(__name__)

SPLIT_ALIASES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
_warned: set[str] = set()  # describe and each split's load read the table: warn once per process


@dataclass
class TagTable:
    """The parsed file: one entry per row."""

    source: Path
    images: list[str]  # absolute paths
    tags: list[list[str]]
    splits: list[str] | None  # normalised split per row, if the file has a split column
    lines: list[int]  # the line each row ends on, for messages
    loose: list[int]  # lines whose labels are empty or were split on whitespace (a multi-label guess)
    listed: bool  # some row lists several tags on purpose (``;``/``|`` or a JSON list)


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


def read_table(root: Path, allow_outside_paths: bool = False, multi_label: bool | None = None) -> TagTable:
    """Parse the file and check every listed image exists (and stays inside the file's folder).
    ``multi_label=False`` keeps whitespace inside a CSV label (see the module docstring).

    Raises:
        ValueError: the file is malformed (:func:`read_rows`), a label value has a type that is not
            a tag, a split value is unknown, or an image path leaves the file's folder while
            ``allow_outside_paths`` is False.
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
    tags, loose, listed = _parse_labels(table, multi_label)
    return TagTable(path, images, tags, _read_splits(table.rows, path), table.lines, loose, listed)


def describe_table(
    root: Path, multi_label: bool | None = None, allow_outside_paths: bool = False
) -> DatasetInfo:
    """Task and class names from the training rows (a holdout keeps every tag in training, so its
    fraction and seed do not change them)."""
    table = read_table(root, allow_outside_paths, multi_label)
    task = _task(table, multi_label)
    train = _split_rows(table, "train", 0.1, 0)
    return DatasetInfo(task, tuple(_classes(table, train, task)))


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
    table = read_table(root, allow_outside_paths, multi_label)
    task = _task(table, multi_label)
    train_rows = _split_rows(table, "train", val_fraction, seed)
    classes = _classes(table, train_rows, task)
    rows = train_rows if split == "train" else _split_rows(table, split, val_fraction, seed)
    _check_known_tags(table, rows, classes, split)
    targets = _targets(table, rows, classes, task)
    paths = [table.images[i] for i in rows]
    paths, targets = keep_readable(paths, targets, f"{table.source.name}/{split}")
    return ImageFileDataset(paths, targets, classes, task)


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


def _parse_labels(table: TableRows, multi_label: bool | None) -> tuple[list[list[str]], list[int], bool]:
    """Each row's sorted tags, the lines of rows whose labels are empty or split on whitespace, and
    whether any row lists several tags on purpose (the rules of the module docstring)."""
    texts = [cell for cell in (row["labels"] for row in table.rows) if isinstance(cell, str)]
    separator = next((sep for sep in (";", "|") if any(sep in text for text in texts)), None)
    tags, loose, listed = [], [], False
    for row, line in zip(table.rows, table.lines):
        parts, on_purpose = _label_parts(row["labels"], separator, multi_label, table.path, line)
        row_tags = sorted({str(part).strip() for part in parts} - {""})
        tags.append(row_tags)
        listed |= on_purpose and len(row_tags) > 1
        if not row_tags or (len(row_tags) > 1 and not on_purpose):
            loose.append(line)
    return tags, loose, listed


def _label_parts(value: Any, separator: str | None, multi_label: bool | None, path: Path,
                 line: int) -> tuple[list[str | int], bool]:
    """One ``labels`` value as tag parts, and whether several parts were listed on purpose."""
    if isinstance(value, str):
        if separator is not None:
            return value.split(separator), True
        return ([value] if multi_label is False else value.split()), False
    if value is None:  # a JSON null: no tag, like an empty CSV cell
        return [], False
    if isinstance(value, list) and all(_is_tag(item) for item in value):
        return value, True
    if _is_tag(value):
        return [value], False
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    raise InvalidValueError(
        f"Expected the 'labels' value on line {line} of {path} to be a tag name, an integer class or a "
        f"list of them, but got {shown} ({type(value).__name__}). Fix: write e.g. \"cat\", 3 or "
        "[\"cat\", \"dog\"]."
    )


def _is_tag(value: Any) -> bool:
    """A string, or an integer (a class named by its digits); a bool is not an integer here."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


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
    if multi_label is not None:
        return "multi_label" if multi_label else "single_label"
    if all(len(tags) == 1 for tags in table.tags):
        return "single_label"
    if not table.listed:
        _warn_once(
            f"{table.source}: lines {describe_names(table.loose)}: the labels cell is empty or holds "
            f"several words split on whitespace, so the table is read as multi-label "
            f"({len({tag for tags in table.tags for tag in tags})} tags). If each image has one class, fill "
            "in the empty cells and pass multi_label: false (a class name may then hold spaces); if it "
            "is multi-label, pass multi_label: true or separate tags with ';'. "
            "(--data.dataset_options '{\"multi_label\": true}')"
        )
    return "multi_label"


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


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
    is_val = holdout_mask(keys, _strata(table), fraction, seed, source=str(table.source))
    return np.flatnonzero(is_val if split == "val" else ~is_val)


def _strata(table: TagTable) -> np.ndarray:
    """Rows with one tag each are stratified by it ``[N]``; otherwise by every tag, multi-hot
    ``[N, K]`` (bool: a byte per cell, where the float targets take four)."""
    if all(len(tags) == 1 for tags in table.tags):
        return np.unique([tags[0] for tags in table.tags], return_inverse=True)[1]
    index = {tag: k for k, tag in enumerate(sorted({tag for tags in table.tags for tag in tags}))}
    present = np.zeros((len(table.tags), max(1, len(index))), dtype=bool)
    for row, tags in enumerate(table.tags):
        present[row, [index[tag] for tag in tags]] = True
    return present


def class_order(names: set[str]) -> list[str]:
    """``names`` sorted; by value when every name is a whole number, so that integer labels
    ``0 .. K-1`` are class ids (label ``k`` is output ``k``, ``"10"`` after ``"9"``)."""
    if names and all(name.isdigit() for name in names):
        return sorted(names, key=lambda name: (int(name), name))
    return sorted(names)


def _classes(table: TagTable, train_rows: np.ndarray, task: Task) -> list[str]:
    classes = class_order({tag for i in train_rows for tag in table.tags[i]})
    if not classes:
        raise InvalidValueError(f"Expected tags in the training rows of {table.source}, but found none.")
    if task == "single_label" and len(classes) < 2:
        # One class is nothing to learn: every image would get it, whatever it shows.
        raise InvalidValueError(
            f"Expected at least 2 classes in the training rows of {table.source} for single-label "
            f"training, but every one has {classes[0]!r}. Fix: add rows of the other classes; to tell "
            f"{classes[0]!r} from everything else, add rows of other images labelled e.g. 'other'."
        )
    return classes


def _check_known_tags(table: TagTable, rows: np.ndarray, classes: list[str], split: str) -> None:
    unknown = sorted({tag for i in rows for tag in table.tags[i]} - set(classes))
    if unknown:
        raise InvalidValueError(
            f"Tags {describe_names(unknown)} appear in the {split} rows of {table.source} but in no training row: "
            "a model cannot learn them. Fix: add training rows with them or remove them."
        )


def _targets(table: TagTable, rows: np.ndarray, classes: list[str], task: Task) -> np.ndarray:
    index = {name: i for i, name in enumerate(classes)}
    if task == "single_label":
        bad = [table.lines[i] for i in rows if len(table.tags[i]) != 1]
        if bad:
            raise InvalidValueError(
                f"Expected exactly one tag per row for single-label data, but lines {describe_names(bad)} of "
                f"{table.source} have none or several. Fix: give each one class, or pass multi_label: true."
            )
        return np.array([index[table.tags[i][0]] for i in rows], dtype=np.int64)
    targets = np.zeros((len(rows), len(classes)), dtype=np.float32)
    for row, i in enumerate(rows):
        targets[row, [index[tag] for tag in table.tags[i]]] = 1.0
    return targets
