"""A Hugging Face ``datasets`` dataset as training data: ``ImageDataModule(dataset="hf", root=...)``.

Where the data comes from (a hub id from the local caches, a ``save_to_disk`` folder, Parquet or
Arrow files, an ``imagefolder`` with metadata) is :mod:`.hf_source`'s; which columns hold the image
and the labels, and so the task and the classes, is :mod:`.hf_columns`'s. This module picks the
splits and serves the items.

Splits: the dataset's own (``train``; ``validation``, ``valid``, ``val`` or ``dev``; ``test``),
or ``val_split`` names the one to validate on (e.g. ``test`` for CIFAR, whose papers report the
test set). Without one, ``val`` is the deterministic holdout the folder and CSV sources use
(:func:`tresnet_ft.data.splits.holdout_mask`, keyed by row number).

Items are decoded on access only: the images stay encoded in the memory-mapped Arrow table (the
``Image`` feature is read as its stored ``{bytes, path}``, never decoded by ``datasets``), and each
loader worker decodes with the same robust decoder as image files (:func:`~.images.decode_image`),
skipping and reporting unreadable images the same way (:class:`~.base.DecodedImageDataset`).
Pickling a dataset for a worker sends the Arrow files' paths, not their contents.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .base import DatasetInfo, DecodedImageDataset, Task, check_split
from .hf_columns import Columns, classes_from, detect_columns, read_labels, targets_from
from .hf_source import Source, hub_cached, is_hub_id, missing_hub_dataset, open_source
from .images import UnreadableImageError, decode_image, read_image
from .splits import holdout_mask
from ..errors import InvalidValueError, MissingInputError
from ..fetch.download import MissingInput

SPLIT_NAMES = {"train": ("train", "training"), "val": ("validation", "valid", "val", "dev"),
               "test": ("test", "testing")}


class HFImageDataset(DecodedImageDataset):
    """Rows of a ``datasets.Dataset`` whose image column is decoded on each access.

    Args:
        table_dataset: the ``datasets.Dataset`` (memory-mapped; only its Arrow table is read).
        image_column: the column of encoded images (``Image`` feature or bytes).
        rows: the table rows this dataset serves ``[N]``.
        targets, classes, task: as for :class:`~.base.LabelledDataset`.
        name: how messages name the split, e.g. ``uoft-cs/cifar100[train]``.
        folder: where a row that stores only a relative image path finds its file.
    """

    def __init__(self, table_dataset: Any, image_column: str, rows: np.ndarray, targets: np.ndarray,
                 classes: list[str], task: Task, name: str, folder: Path) -> None:
        super().__init__(targets, classes, task)
        self.table_dataset, self.image_column = table_dataset, image_column
        self.rows = np.asarray(rows, dtype=np.int64)
        self.name, self.folder = name, folder
        self._column: Any = None  # the image column's chunks, looked up once per process
        self._chunk_starts: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        # A worker gets the datasets.Dataset, which pickles as its Arrow files' paths; the pyarrow
        # column would pickle as its contents, so each process looks it up again instead.
        state = self.__dict__.copy()
        state["_column"], state["_chunk_starts"] = None, None
        return state

    def _cell(self, row: int) -> Any:
        if self._column is None:
            self._column = self.table_dataset.data.table.column(self.image_column)
            self._chunk_starts = np.cumsum([0] + [len(chunk) for chunk in self._column.chunks])
        chunk = int(np.searchsorted(self._chunk_starts, row, side="right")) - 1
        return self._column.chunk(chunk)[row - int(self._chunk_starts[chunk])]

    def _decode(self, item: int) -> np.ndarray:
        cell = self._cell(int(self.rows[item]))
        if hasattr(cell, "keys"):  # the Image feature's {bytes, path} struct
            data, path = cell["bytes"].as_py(), cell["path"].as_py() if "path" in cell.keys() else None
        else:
            data, path = cell.as_py(), None
        if data is None and path is None:
            raise UnreadableImageError(self._name(item), "no image (an empty cell)")
        if data is None:  # stored as a path only (imagefolder): checked to stay in the source's folders
            return read_image(self.folder / path, self.min_decode_size, self.limits)
        if len(data) > self.limits.max_bytes:
            raise UnreadableImageError(self._name(item), f"{len(data):,} bytes, above the limit of "
                                       f"{self.limits.max_bytes:,} bytes (raise it with --data.max_image_bytes)")
        return decode_image(data, self.min_decode_size, self._name(item), self.limits)

    def _name(self, item: int) -> str:
        return f"{self.name} row {int(self.rows[item])}"

    def _location(self) -> str:
        return self.name

    def select(self, indices: np.ndarray) -> HFImageDataset:
        """A new dataset holding only ``indices`` (class list and options are kept)."""
        subset = HFImageDataset(self.table_dataset, self.image_column, self.rows[indices], self.targets[indices],
                                self.classes, self.task, self.name, self.folder)
        subset.min_decode_size, subset.limits = self.min_decode_size, self.limits
        subset.skip_unreadable, subset.max_unreadable_share = self.skip_unreadable, self.max_unreadable_share
        subset.unreadable = self.unreadable
        return subset


def prepare_hf(root: Path, download: bool = True, progress: bool = True, cache_dir: str | None = None) -> None:
    """Check the source exists; a hub id in no local cache is downloaded here (once, on one
    process) when ``download`` allows it. Local sources are opened (and Parquet converted) when
    described."""
    if is_hub_id(str(root)):
        if not hub_cached(str(root), cache_dir):
            open_source(root, cache_dir, download)
        return
    missing = missing_hf(root, download)
    if missing is not None:
        raise MissingInputError(f"{missing.what} {missing.fix}")


def missing_hf(root: Path, download: bool, cache_dir: str | None = None) -> MissingInput | None:
    """For the check before training: what of ``root`` is not on this machine (no network used)."""
    text = str(root)
    if is_hub_id(text):
        return None if hub_cached(text, cache_dir) else missing_hub_dataset(text, download)
    if any(char in text for char in "*?[") or Path(text).expanduser().exists():
        return None  # a glob is checked when it is opened, with the pattern in the message
    return MissingInput(f"Data {text} does not exist.", "Fix: set data.root to a dataset folder, Parquet/Arrow "
                        "file(s) or a hub id such as uoft-cs/cifar100.")


def describe_hf(root: Path, image_column: str | None = None, label_column: str | None = None,
                val_split: str | None = None, cache_dir: str | None = None) -> DatasetInfo:
    """Task and classes from the features and the training labels (no image is read)."""
    source = open_source(root, cache_dir)
    train = _split(source, "train", val_split)
    columns = detect_columns(train.features, _where(source, "train"), image_column, label_column)
    classes = classes_from(columns, read_labels(train.data.table, columns), _where(source, "train"))
    return DatasetInfo(columns.task, tuple(classes))


def load_hf(root: Path, split: str, val_fraction: float = 0.1, seed: int = 0, image_column: str | None = None,
            label_column: str | None = None, val_split: str | None = None, cache_dir: str | None = None,
            allow_outside_paths: bool = False) -> HFImageDataset:
    """Load one split of a Hugging Face dataset.

    Args:
        root: a hub id, a ``save_to_disk`` folder, Parquet/Arrow file(s) or a glob, or an
            ``imagefolder`` (see :mod:`.hf_source`).
        split: ``"train"``, ``"val"`` or ``"test"``.
        val_fraction, seed: the holdout for ``val`` when the dataset has no validation split.
        image_column, label_column: name the columns instead of detecting them (:mod:`.hf_columns`).
        val_split: the dataset's split to validate on (e.g. ``"test"``); None: its validation
            split if it has one, else the holdout.
        cache_dir: the ``datasets`` cache (where Parquet is converted and ``load_dataset`` copies
            are looked for); None: ``HF_DATASETS_CACHE``.
        allow_outside_paths: read rows that store only an image path even when it leaves the
            source's folders (off: a table from someone else cannot make training read any file).
    """
    check_split(split)
    source = open_source(root, cache_dir)
    train = _split(source, "train", val_split)
    columns = detect_columns(train.features, _where(source, "train"), image_column, label_column)
    classes = classes_from(columns, read_labels(train.data.table, columns), _where(source, "train"))
    own = _split(source, split, val_split) if split != "train" else None
    if own is not None:
        return _dataset(source, own, _own_name(source, split, val_split), columns, classes, None, allow_outside_paths)
    if split == "test":
        raise MissingInputError(f"Expected a test split in {source.name} (one of {list(SPLIT_NAMES['test'])}), but it "
                                f"has {sorted(source.splits)}. Fix: evaluate on val, or give a source with a test split.")
    if _split(source, "val", val_split) is not None:  # train keeps every row: validation is its own split
        return _dataset(source, train, "train", columns, classes, None, allow_outside_paths)
    targets = targets_from(read_labels(train.data.table, columns), columns, classes, _where(source, "train"))
    is_val = holdout_mask(range(len(targets)), targets, val_fraction, seed, source=_where(source, "train"))
    rows = np.flatnonzero(is_val if split == "val" else ~is_val)
    return _dataset(source, train, "train", columns, classes, rows, allow_outside_paths)


def _split(source: Source, split: str, val_split: str | None) -> Any | None:
    """The dataset's split that serves ``split``; None for val/test when it has none."""
    if split == "val" and val_split is not None:
        if val_split not in source.splits:
            raise InvalidValueError(f"Expected val_split to be one of the splits of {source.name}, "
                                    f"{sorted(source.splits)}, but got {val_split!r}.")
        return source.splits[val_split]
    name = _split_name(source, split)
    if name is None and split == "train":
        raise InvalidValueError(f"Expected a training split in {source.name} (one of {list(SPLIT_NAMES['train'])}), "
                                f"but it has {sorted(source.splits)}. Fix: pass the folder or file of the training "
                                "data as data.root.")
    return None if name is None else source.splits[name]


def _split_name(source: Source, split: str) -> str | None:
    return next((name for name in SPLIT_NAMES[split] if name in source.splits), None)


def _own_name(source: Source, split: str, val_split: str | None) -> str:
    return val_split if split == "val" and val_split is not None else str(_split_name(source, split))


def _where(source: Source, split_name: str) -> str:
    return f"{source.name}[{split_name}]"


def _dataset(source: Source, table_dataset: Any, split_name: str, columns: Columns, classes: list[str],
             rows: np.ndarray | None, allow_outside_paths: bool) -> HFImageDataset:
    where = _where(source, split_name)
    labels = read_labels(table_dataset.data.table, columns)
    rows = np.arange(len(labels)) if rows is None else rows
    targets = targets_from([labels[i] for i in rows] if isinstance(labels, list) else labels[rows],
                           columns, classes, where)
    if not allow_outside_paths:
        _check_stored_paths(table_dataset, columns.image, rows, source, where)
    return HFImageDataset(table_dataset, columns.image, rows, targets, classes, columns.task, where,
                          source.folders[0])


def _check_stored_paths(table_dataset: Any, image_column: str, rows: np.ndarray, source: Source, where: str) -> None:
    """Refuse rows that keep only a path to an image outside the source's folders."""
    import pyarrow.compute as pc

    column = table_dataset.data.table.column(image_column)
    if not hasattr(column.type, "get_field_index") or column.type.get_field_index("path") < 0:
        return  # raw bytes: nothing points anywhere
    path_only = pc.and_(pc.is_null(pc.struct_field(column, "bytes")), pc.is_valid(pc.struct_field(column, "path")))
    candidates = np.intersect1d(np.flatnonzero(path_only.to_numpy(zero_copy_only=False)), rows)
    if not len(candidates):
        return
    paths = pc.struct_field(column, "path").take(candidates).to_pylist()
    folders = [folder.resolve() for folder in source.folders]
    for row, path in zip(candidates, paths):
        full = Path(os.path.normpath(source.folders[0] / path))
        if not any(full.is_relative_to(folder) for folder in folders):
            raise InvalidValueError(
                f"Row {int(row)} of {where} stores only the image path {path!r}, which is outside the dataset's "
                f"folders {[str(f) for f in folders]}. Fix: embed the images (datasets' Image feature keeps their "
                "bytes with push_to_hub/to_parquet), or, for data you trust, dataset_options "
                "{\"allow_outside_paths\": true}.")
