"""Dataset names → how to prepare, describe and load them: a table of data, not an if-chain.

Every entry has three functions with one calling convention:

* ``prepare(root, download, progress)``: put the files in place (download, extract) or check
  they are there. Runs once, on one process, before training.
* ``describe(root, **options) -> DatasetInfo``: task and class names, cheap (no image decoded),
  so a model can be built before any data is loaded.
* ``load(root, split, **options)``: the map-style dataset for one split.

For named datasets ``root`` is the data root that holds their folders; for ``folder``, ``csv``
and ``jsonl`` it is the user's folder or file itself; for ``hf`` also a hub id (``ORG/NAME``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from . import cars, cifar, flowers, folder, hf, quickstart, tabular
from .base import DatasetInfo, check_split
from ..fetch.download import DatasetNotFoundError, MissingInput, default_data_root
from ..errors import InvalidValueError


@dataclass(frozen=True)
class DatasetEntry:
    """How one named dataset is prepared, described and loaded."""

    prepare: Callable[..., None]
    describe: Callable[..., DatasetInfo]
    load: Callable[..., Dataset]
    root_is_data: bool  # True: root is the user's own folder/file, so it must be given
    summary: str
    # What of root is not on this machine, for sources that are not plain paths (hub ids); None:
    # root_is_data entries need root to exist, the others ask prepare().
    # (Both may take dataset options by keyword, e.g. hf's cache_dir: only those they name are given.)
    missing: Callable[..., MissingInput | None] | None = None


def _cifar_entry(spec: cifar.CifarSpec, summary: str) -> DatasetEntry:
    """CIFAR-10 and CIFAR-100 share one reader, parametrised by their spec."""
    return DatasetEntry(partial(cifar.prepare_cifar, spec), partial(cifar.describe_cifar, spec),
                        partial(cifar.load_cifar, spec), False, summary)


DATASETS: dict[str, DatasetEntry] = {
    "cifar10": _cifar_entry(cifar.CIFAR10, "CIFAR-10, 32 px, in memory, downloaded"),
    "cifar100": _cifar_entry(cifar.CIFAR100, "CIFAR-100, 32 px, in memory, downloaded"),
    "flowers102": DatasetEntry(
        flowers.prepare_flowers,
        flowers.describe_flowers,
        flowers.load_flowers,
        False,
        "Oxford Flowers-102, official 1,020/1,020/6,149 splits, downloaded",
    ),
    "stanford_cars": DatasetEntry(
        cars.prepare_cars,
        cars.describe_cars,
        cars.load_cars,
        False,
        "Stanford Cars, 196 classes, from a copy you place in the devkit layout",
    ),
    "folder": DatasetEntry(
        folder.prepare_folder,
        folder.describe_folder,
        folder.load_folder,
        True,
        "your images in class sub-folders (train/val/test or a single level)",
    ),
    "csv": DatasetEntry(
        tabular.prepare_table,
        tabular.describe_table,
        tabular.load_table,
        True,
        "a CSV of image paths and tags (single- or multi-label)",
    ),
    "jsonl": DatasetEntry(
        tabular.prepare_table,
        tabular.describe_table,
        tabular.load_table,
        True,
        "a JSON-lines file of image paths and tags (single- or multi-label)",
    ),
    "hf": DatasetEntry(
        hf.prepare_hf,
        hf.describe_hf,
        hf.load_hf,
        True,
        "a Hugging Face dataset: hub id (local cache), save_to_disk folder, Parquet/Arrow files, imagefolder",
        hf.missing_hf,
    ),
    "quickstart": DatasetEntry(
        quickstart.prepare_quickstart,
        quickstart.describe_quickstart,
        quickstart.load_quickstart,
        False,
        "generated coloured shapes, one per image (offline)",
    ),
    "quickstart_multilabel": DatasetEntry(
        quickstart.prepare_quickstart,
        partial(quickstart.describe_quickstart, multi_label=True),
        partial(quickstart.load_quickstart, multi_label=True),
        False,
        "generated coloured shapes, one to three per image (offline, multi-label)",
    ),
}


def get_entry(name: str) -> DatasetEntry:
    """The registry entry for ``name``; a ValueError lists the known names otherwise."""
    if name not in DATASETS:
        raise InvalidValueError(f"Expected dataset to be one of {sorted(DATASETS)}, but got {name!r}.")
    return DATASETS[name]


def resolve_root(name: str, root: str | Path | None) -> Path:
    """The folder to use: ``root``, or the default data root for named datasets."""
    if root is not None:
        return Path(root).expanduser()
    if get_entry(name).root_is_data:
        raise InvalidValueError(
            f"Dataset {name!r} reads your own data: expected root to be its folder or file, but got None."
        )
    return default_data_root()


def missing_dataset(name: str, root: str | Path | None, download: bool,
                    options: dict[str, Any] | None = None) -> MissingInput | None:
    """What of dataset ``name`` is not on disk yet, with how to get it; None when nothing is.

    Touches no network: published files count as missing here, with the URL they would be
    downloaded from when ``download`` is on. Your own folder or file only has to exist; its
    layout is checked when the data is described.
    """
    entry = get_entry(name)
    folder = resolve_root(name, root)
    if entry.missing is not None:
        return entry.missing(folder, download, **_accepted(entry.missing, options or {}))
    if entry.root_is_data:
        return None if folder.exists() else MissingInput(
            f"Data {folder} does not exist.", "Fix: set data.root to your image folder or CSV/JSONL file.")
    try:
        entry.prepare(folder, False, False)
    except DatasetNotFoundError as error:
        if error.files is None:  # no published files to download (Stanford Cars): the message says it all
            return MissingInput(str(error), "")
        return error.files.as_input(download)
    return None


def check_options(name: str, function: Callable[..., Any], options: dict[str, Any]) -> None:
    """Raise a ValueError naming any option ``function`` does not take (and the ones it does)."""
    skip = {"root", "split"}
    accepted = [p for p in inspect.signature(function).parameters if p not in skip]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InvalidValueError(f"Dataset {name!r} does not take options {unknown}; it takes {accepted}.")


def _accepted(function: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
    """The ``options`` that ``function`` takes by name."""
    parameters = inspect.signature(function).parameters
    return {k: v for k, v in options.items() if k in parameters and k not in ("root", "split")}


def describe_dataset(name: str, root: str | Path | None = None, **options: Any) -> DatasetInfo:
    """Task and class names of a dataset without loading images (``options`` as for loading)."""
    entry = get_entry(name)
    return entry.describe(resolve_root(name, root), **_accepted(entry.describe, options))


def prepare_dataset(name: str, root: str | Path | None, download: bool, progress: bool = True,
                    **options: Any) -> None:
    """Put dataset ``name`` in place (download, extract) or check it is there; ``options`` as for
    loading (only those its prepare step names are used, e.g. hf's ``cache_dir``)."""
    entry = get_entry(name)
    entry.prepare(resolve_root(name, root), download, progress, **_accepted(entry.prepare, options))


def load_dataset(
    name: str,
    root: str | Path | None = None,
    split: str = "train",
    download: bool = True,
    progress: bool = True,
    **options: Any,
) -> Dataset:
    """Load one split of a dataset by name.

    Args:
        name: a key of :data:`DATASETS` (``cifar10``, ``cifar100``, ``flowers102``,
            ``stanford_cars``, ``folder``, ``csv``, ``jsonl``, ``hf``, ``quickstart``,
            ``quickstart_multilabel``).
        root: data root for named datasets (default ``$TRESNET_FT_DATA`` or
            ``~/.cache/tresnet-ft/datasets``); the folder or file itself for ``folder``/``csv``/``jsonl``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        download: fetch missing published files (CIFAR, Flowers-102).
        progress: show progress bars while downloading and extracting.
        **options: dataset-specific, e.g. ``val_fraction``, ``seed``, ``multi_label``.

    Returns:
        A map-style dataset of ``(image uint8 [H, W, 3], target)`` with ``.classes`` and ``.task``.

    Example:
        >>> ds = load_dataset("quickstart", split="val")
        >>> image, label = ds[0]
        >>> image.shape, ds.classes[label]
        ((64, 64, 3), 'circle')
    """
    entry = get_entry(name)
    check_split(split)
    check_options(name, entry.load, options)
    prepare_dataset(name, root, download, progress, **options)
    return entry.load(resolve_root(name, root), split, **options)
