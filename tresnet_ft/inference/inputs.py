"""Turn what a user names (image files, folders, CSV/JSONL tables) into a list of image paths.

* a file with a ``.csv``/``.jsonl`` suffix is a table, read by the same reader as training tables
  (:func:`tresnet_ft.data.tabular.read_rows`): its ``image`` column lists images, relative to the
  table's folder or absolute; other columns (``labels``, ``split``) are ignored here;
* any other file is an image, whatever its suffix (the decoder decides; a non-image ends up in
  the unreadable list, it does not stop the run). That includes a FIFO or a device named
  directly: it is listed, then refused by the reader as not a regular file, without being opened
  (a FIFO would block) or read (``/dev/zero`` never ends), and never read as a table;
* a folder lists the images that training would see in it (:func:`tresnet_ft.data.files.image_files`:
  image suffixes, hidden files and folders skipped, sorted by path).

Unlike training, a table may name images outside its folder: predicting reads a file the user
chose, it does not train on it. Only paths are listed (a few hundred bytes per image); nothing is
opened or decoded here.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..data.files import image_files
from ..data.images import IMAGE_EXTENSIONS
from ..data.tabular import TABLE_SUFFIXES, read_rows
from ..errors import InvalidValueError, MissingInputError


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


def _paths_of(source: Path) -> list[str]:
    if source.is_dir():
        return image_files(source)
    if source.is_file() and source.suffix.lower() in TABLE_SUFFIXES:
        return read_rows(source).image_paths()
    if source.is_file() or source.exists():  # exists(): a FIFO, a device (see the module doc)
        return [str(source)]
    raise MissingInputError(f"Expected an image file, a folder or a CSV/JSONL table at {source}, "
                            "but nothing exists there. Fix: check the path (relative paths start "
                            f"from {Path.cwd()}).")


def _describe_sources(inputs: Sequence[str | Path]) -> str:
    described = []
    for source in map(Path, inputs):
        if source.is_dir():
            described.append(f"{source} (folder, searched recursively)")
        else:
            described.append(f"{source} (table with no rows)")
    return ", ".join(described)
