"""Turn what a user names (image files, folders, CSV/JSONL tables) into a list of image paths.

* a file with a ``.csv``/``.jsonl`` suffix is a table: its ``image`` column lists images, relative
  to the table's folder or absolute (the convention of :mod:`tresnet_ft.data.tabular`);
* any other file is an image, whatever its suffix (the decoder decides; a non-image ends up in
  the unreadable list, it does not stop the run);
* a folder is searched recursively for image suffixes (case-insensitive), skipping hidden files
  and hidden folders, sorted by path so that runs are reproducible.

Only paths are listed (a few hundred bytes per image); nothing is opened or decoded here.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..data.images import IMAGE_EXTENSIONS
from ..data.tabular import TABLE_SUFFIXES
from ..errors import InvalidValueError, MissingInputError

IMAGE_COLUMN = "image"


def list_image_paths(inputs: Sequence[str | Path]) -> list[str]:
    """All images named by ``inputs``, in input order, each path once.

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: no inputs, a table without an ``image`` column or with a malformed line, or
            no images at all (the message says where it looked).
    """
    if isinstance(inputs, (str, Path)) or not inputs:
        raise InvalidValueError(f"Expected a list of image files, folders or CSV/JSONL tables, but got {inputs!r}. "
                         "Fix: pass e.g. ['photos/'] or ['images.csv'].")
    found: dict[str, None] = {}  # an ordered set: a file named twice is predicted once
    for source in inputs:
        for path in _paths_of(Path(source)):
            found.setdefault(path)
    if not found:
        raise InvalidValueError(f"Expected at least one image, but found none in {_describe_sources(inputs)}. Fix: "
                         f"point at images with one of the suffixes {sorted(IMAGE_EXTENSIONS)} (hidden "
                         "files are skipped), or at a CSV/JSONL file with rows in its 'image' column.")
    return list(found)


def _paths_of(source: Path) -> Iterator[str]:
    if source.is_dir():
        return _images_in_folder(source)
    if source.is_file():
        return _images_in_table(source) if source.suffix.lower() in TABLE_SUFFIXES else iter([str(source)])
    raise MissingInputError(f"Expected an image file, a folder or a CSV/JSONL table at {source}, "
                            "but nothing exists there. Fix: check the path (relative paths start "
                            f"from {Path.cwd()}).")


def _images_in_folder(folder: Path) -> Iterator[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [name for name in dirs if not name.startswith(".")]  # prune hidden folders
        found += [os.path.join(root, name) for name in files
                  if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS]
    return iter(sorted(found))


def _images_in_table(table: Path) -> Iterator[str]:
    rows = _jsonl_rows(table) if table.suffix.lower() == ".jsonl" else _csv_rows(table)
    for number, row in rows:
        value = row.get(IMAGE_COLUMN)
        if value is None or not str(value).strip():
            raise InvalidValueError(f"Expected an image path in the {IMAGE_COLUMN!r} field of row {number} of "
                             f"{table}, but got {value!r}. Fix: fill it in or remove the row.")
        # As in training tables: relative to the table's folder (an absolute path replaces it),
        # resolved so that "../x.jpg" and symlinked folders name the file that is actually read.
        yield str((table.parent / str(value).strip()).resolve())


def _csv_rows(table: Path) -> Iterator[tuple[int, dict]]:
    with open(table, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if IMAGE_COLUMN not in columns:
            raise InvalidValueError(f"Expected an {IMAGE_COLUMN!r} column in {table}, but got columns {columns}. "
                             f"Fix: name the column of image paths {IMAGE_COLUMN!r} in the header row.")
        yield from enumerate(reader, start=2)  # line 1 is the header


def _jsonl_rows(table: Path) -> Iterator[tuple[int, dict]]:
    with open(table, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise InvalidValueError(f"Expected one JSON object per line in {table}, but line {number} is "
                                 f"not: {error}.") from error
            if not isinstance(row, dict) or IMAGE_COLUMN not in row:
                keys = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise InvalidValueError(f"Expected an {IMAGE_COLUMN!r} key on line {number} of {table}, but got "
                                 f"{keys}. Fix: write each line as {{\"{IMAGE_COLUMN}\": \"path/to.jpg\"}}.")
            yield number, row


def _describe_sources(inputs: Sequence[str | Path]) -> str:
    described = []
    for source in map(Path, inputs):
        if source.is_dir():
            described.append(f"{source} (folder, searched recursively)")
        else:
            described.append(f"{source} (table with no rows)")
    return ", ".join(described)
