"""The one reader of CSV and JSONL image tables, shared by training (:mod:`.tabular`) and
``tresnet-ft predict`` (:mod:`tresnet_ft.inference.inputs`), so both read the same rows the same way.

A table is read strictly or not at all: every problem below is an error that names the file, the
line and the fix, and no row is ever dropped without one.

* **Encoding.** UTF-8, with or without a byte-order mark. Another encoding (Latin-1, Windows-1252)
  is an error naming the first byte that is not UTF-8: its offset and its line.
* **CSV.** A header row, then rows (blank lines skipped), read with ``csv``'s strict mode, so text
  after a closing quote (``"cat"x``) is an error. A quoted cell may span lines, but a stray quote
  also makes one, swallowing the rows after it; so a cell that spans lines is an error when it is
  the image path, or when a line it swallowed holds a comma (it looks like a row). A quote that
  never closes, or one that runs into ``csv``'s limit on one cell (131,072 characters), is the same
  error; each names the line where the quote opens. A row with more non-empty cells than the header
  has columns is an error (the extra cells would be lost; empty trailing cells are fine); a row too
  short to have a column the caller needs is an error.
* **JSONL.** One JSON object per line (blank lines skipped), each with every column the caller
  needs, not only the first line.
* Every row's ``image`` value is a non-empty string.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from ..errors import InvalidValueError

TABLE_SUFFIXES = (".csv", ".jsonl")
IMAGE_COLUMN = "image"
# What each column holds, for the "Fix:" of a missing-column error.
COLUMN_MEANINGS = {IMAGE_COLUMN: "paths relative to the file", "labels": "the tags"}
QUOTE_FIX = (
    "Fix: remove the stray '\"' on that line, or close it; a cell needs quotes only when it holds a "
    "comma, and a quote inside a quoted cell is written twice (\"\")."
)


@dataclass(frozen=True)
class TableRows:
    """The rows of a CSV or JSONL file as written, each with a non-empty image path."""

    path: Path
    rows: list[dict[str, Any]]  # column -> cell (CSV: strings, None past a short row's end; JSONL: any JSON value)
    lines: list[int]  # the line of the file each row ends on, for messages

    def written_images(self) -> list[str]:
        """The ``image`` cells, stripped, as written."""
        return [str(row[IMAGE_COLUMN]).strip() for row in self.rows]

    def image_paths(self) -> list[str]:
        """Absolute image paths: relative ones start at the file's folder (an absolute one stays),
        resolved, so ``../x.jpg`` and symlinked folders name the file that is actually read."""
        return [str((self.path.parent / image).resolve()) for image in self.written_images()]


def read_rows(path: Path, columns: Sequence[str] = (IMAGE_COLUMN,)) -> TableRows:
    """Read a ``.jsonl`` file or, for any other suffix, a CSV file with a header row, by the rules
    of this module's docstring (the same for training and prediction). Every row has every column in
    ``columns``; an empty file has no rows (not an error here).

    Raises:
        ValueError: the file is not UTF-8, a CSV quote is unbalanced or a row has cells beyond the
            header, a line is not a JSON object, a column is missing, or an image cell is empty or not
            a string (the message names the line).
    """
    path = Path(path)
    read = _read_jsonl if path.suffix.lower() == ".jsonl" else _read_csv
    try:
        rows, lines = read(path, columns)
    except UnicodeDecodeError as error:
        raise _not_utf8(path, error) from error
    for row, line in zip(rows, lines):
        value = row.get(IMAGE_COLUMN)
        if not isinstance(value, str) or not value.strip():
            raise InvalidValueError(
                f"Expected an image path in the {IMAGE_COLUMN!r} column on line {line} of {path}, but got "
                f"{value!r}. Fix: fill it in (as a string) or remove the row."
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
        reader = csv.reader(handle, strict=True)
        last_line = 0  # the line the previous record ended on: the next one starts after it
        try:
            header = next(reader, None)  # None: an empty file, which simply has no rows
            missing = [column for column in columns if header is not None and column not in header]
            if missing:
                raise _missing_column(path, missing[0], header or [], columns)
            last_line = reader.line_num
            for cells in reader:
                start, last_line = last_line + 1, reader.line_num
                if cells:  # [] is a blank line
                    _check_line_breaks(path, header, cells, start, last_line)
                    rows.append(_row_of(path, header, cells, columns, last_line))
                    lines.append(last_line)
        except csv.Error as error:
            raise _malformed_csv(path, error, last_line + 1, reader.line_num) from error
    return rows, lines


def _check_line_breaks(path: Path, header: list[str], cells: list[str], start: int, end: int) -> None:
    """Refuse a record that spans lines because of a stray quote (see the module docstring)."""
    if end == start:
        return
    for name, cell in zip(header, cells):
        swallowed = cell.splitlines()[1:]
        if swallowed and (name == IMAGE_COLUMN or any("," in text for text in swallowed)):
            raise InvalidValueError(
                f"Line {start} of {path} opens a quoted cell that closes only on line {end}, so lines "
                f"{start}-{end} were read as one row ({_line_text(path, start)}). {QUOTE_FIX}"
            )


def _row_of(path: Path, header: list[str], cells: list[str], columns: Sequence[str], line: int) -> dict:
    """One CSV record as ``column -> cell``; columns past a short record's end hold None."""
    if any(cell.strip() for cell in cells[len(header):]):
        raise InvalidValueError(
            f"Line {line} of {path} has {len(cells)} cells but the header names {len(header)} columns "
            f"{header}: the cells past them would be lost. Fix: quote a cell that holds a comma "
            "(\"a,b\"), or separate tags with ';'."
        )
    row = {name: cells[i] if i < len(cells) else None for i, name in enumerate(header)}
    short = [column for column in columns if row.get(column) is None]
    if short:
        raise InvalidValueError(
            f"Line {line} of {path} has {len(cells)} cell(s), so it has no {short[0]!r} cell (the header "
            f"names {header}). Fix: add the missing cells (an empty one is written as a bare comma)."
        )
    return row


def _malformed_csv(path: Path, error: csv.Error, start: int, line: int) -> InvalidValueError:
    """A ``csv`` error as a message naming where the record went wrong and the fix."""
    if "end of data" in str(error):
        return InvalidValueError(
            f"Line {start} of {path} opens a quoted cell that never closes, so every line after it would "
            f"be read as one cell ({_line_text(path, start)}). {QUOTE_FIX}"
        )
    if "field limit" in str(error):
        return InvalidValueError(
            f"Line {start} of {path} opens a quoted cell that does not close before line {line}, where it "
            f"passes csv's limit of {csv.field_size_limit():,} characters for one cell "
            f"({_line_text(path, start)}). {QUOTE_FIX}"
        )
    return InvalidValueError(f"Expected well-formed CSV in {path}, but line {line} is not ({error}): "
                             f"{_line_text(path, line)}. {QUOTE_FIX}")


def _line_text(path: Path, number: int, width: int = 60) -> str:
    """``line N: <text>``, cut to ``width`` characters, for a message pointing at that line."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as handle:
        text = next(islice(handle, number - 1, None), "").rstrip("\r\n")
    return f"line {number}: {text[:width]!r}" + (" ..." if len(text) > width else "")


def _not_utf8(path: Path, error: UnicodeDecodeError) -> InvalidValueError:
    """Where the file stops being UTF-8, as a byte offset into the file and its line."""
    data = path.read_bytes()  # only on this error path: the decoder's own offset is per chunk
    offset = None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exact:
        offset = exact.start
    if offset is None:  # not expected: the error came from reading, so the bytes do not decode
        where = f"it does not decode ({error.reason})"
    else:
        line = data.count(b"\n", 0, offset) + 1
        where = f"byte {offset} (0x{data[offset]:02x}, on line {line}) is not UTF-8"
    return InvalidValueError(
        f"Expected {path} to be UTF-8 text, but {where}; it was probably saved as Latin-1 or "
        f"Windows-1252. Fix: save it as UTF-8 (Excel: 'CSV UTF-8'; or iconv -f latin1 -t utf-8 "
        f"{path.name} > utf8-{path.name})."
    )


def _read_jsonl(path: Path, columns: Sequence[str]) -> tuple[list[dict], list[int]]:
    rows, lines = [], []
    # Split on newlines only (not str.splitlines): JSON strings may hold U+2028 and the like.
    with open(path, encoding="utf-8-sig") as handle:
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
