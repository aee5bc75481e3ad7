"""Where a Hugging Face dataset comes from: ``data.root`` turned into its splits, memory-mapped.

``root`` is read, in this order, as:

* a glob (``data/*.parquet``): Parquet or Arrow files, all one split (``train``);
* a folder holding ``dataset_dict.json`` or ``state.json``: written by ``save_to_disk``
  (a ``DatasetDict`` keeps its splits; a single ``Dataset`` is ``train``);
* any other folder: read by the ``datasets`` library's own folder rules, which find Parquet/Arrow
  files (splits from file names such as ``train-*.parquet``, ``test-*.parquet``) or an
  ``imagefolder`` with ``metadata.jsonl``/``metadata.csv`` (splits from ``train/``, ``test/``, ...);
* a ``.parquet`` or ``.arrow`` file: one split, ``train``;
* a hub id (``ORG/NAME``, when no such path exists): looked up in the local caches only, first
  the ``datasets`` cache a ``load_dataset(ID)`` on a connected machine fills (``HF_DATASETS_CACHE``,
  or ``cache_dir``), then the hub cache that ``hf download --repo-type dataset ID`` fills
  (``HF_HUB_CACHE``). If neither has it, it is downloaded into the hub cache, unless
  ``HF_HUB_OFFLINE=1`` or downloads are off: then one line says what to run where.

The root alone decides what is read and fetched: nothing inside a file (a path, a URL, a script)
chooses another source, and image paths stored in a table are checked by :mod:`.hf` to stay in
the source's folders. Parquet and imagefolder sources are converted once by ``datasets`` into Arrow
files in its cache; save_to_disk folders, Arrow files and cached hub copies are mapped in place.
"""

from __future__ import annotations

import glob
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import InvalidValueError, MissingInputError
from ..fetch.download import DatasetNotFoundError, MissingInput, unreachable_urls
from ..fetch.packages import import_package

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
FILE_SUFFIXES = (".parquet", ".arrow")
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Source:
    """One opened dataset: its splits (``datasets.Dataset`` objects backed by memory-mapped Arrow
    files), a name for messages, and the folders that image paths stored in it may point into."""

    splits: dict[str, Any]
    name: str
    folders: tuple[Path, ...]


def datasets_package() -> ModuleType:
    """``import datasets``, or the one-line error naming the extra that installs it."""
    return import_package("datasets", "Training from a Hugging Face dataset (--data.dataset hf)",
                          '"tresnet-ft[datasets]"')


def is_hub_id(root: str) -> bool:
    """Whether ``root`` has the shape of a hub dataset id and is not a path on this machine."""
    return bool(HUB_ID.match(root)) and not Path(root).expanduser().exists()


def open_source(root: str | Path, cache_dir: str | None = None, download: bool = True) -> Source:
    """The splits of ``root`` (see the module docstring). Opened once per process and arguments.

    Raises:
        MissingInputError: no such file, folder or glob match, and not a hub id.
        DatasetNotFoundError: a hub id in no local cache that cannot be downloaded now.
        InvalidValueError: a file of another kind, or a glob mixing Parquet and Arrow.
    """
    return _open_source(str(root), cache_dir, download)


@lru_cache(maxsize=8)
def _open_source(root: str, cache_dir: str | None, download: bool) -> Source:
    path = Path(root).expanduser()
    if _GLOB_CHARS & set(root):
        files = sorted(glob.glob(str(path)))
        if not files:
            raise MissingInputError(f"Expected the glob data.root {root!r} to match Parquet or Arrow files, but it "
                                    "matches nothing. Fix: check the pattern (e.g. 'data/train-*.parquet').")
        return Source({"train": _load_files(files, cache_dir, root)}, root, (Path(files[0]).parent.resolve(),))
    if path.is_dir():
        return Source(_load_folder(path, cache_dir), root, (path.resolve(),))
    if path.is_file():
        return Source({"train": _load_files([str(path)], cache_dir, root)}, root, (path.parent.resolve(),))
    if is_hub_id(root):
        return _open_hub(root, cache_dir, download)
    raise MissingInputError(
        f"Expected data.root to be a save_to_disk folder, a folder of Parquet/Arrow files or of images with "
        f"metadata.jsonl/metadata.csv, a .parquet/.arrow file, a glob of them, or a hub id such as "
        f"uoft-cs/cifar100, but {root!r} is none of these (no such file or folder). Fix: check the path.")


def _load_folder(path: Path, cache_dir: str | None) -> dict[str, Any]:
    datasets = datasets_package()
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        loaded = datasets.load_from_disk(str(path), keep_in_memory=False)
        return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    try:
        return dict(datasets.load_dataset(str(path), cache_dir=cache_dir))
    except (FileNotFoundError, ValueError) as error:  # the library's "no data files" and "empty" errors
        raise InvalidValueError(
            f"Expected {path} to hold a dataset (save_to_disk output, Parquet/Arrow files, or images with "
            f"metadata.jsonl/metadata.csv), but the datasets library found none: {_first_line(error)}") from None


def _load_files(files: list[str], cache_dir: str | None, root: str) -> Any:
    suffixes = sorted({Path(file).suffix.lower() for file in files})
    if len(suffixes) != 1 or suffixes[0] not in FILE_SUFFIXES:
        raise InvalidValueError(f"Expected data.root {root!r} to be Parquet (.parquet) or Arrow (.arrow) files of "
                                f"one kind, but got {suffixes}. Fix: pass a folder, or one kind of file.")
    datasets = datasets_package()
    if suffixes[0] == ".arrow":  # mapped in place, no copy: Arrow files written by the datasets library
        try:
            return datasets.concatenate_datasets([datasets.Dataset.from_file(file) for file in files])
        except Exception as error:  # pyarrow raises several types for "not an Arrow stream"
            raise InvalidValueError(f"Could not read {root} as Arrow files written by the datasets library "
                                    f"({type(error).__name__}: {_first_line(error)}). Fix: pass the folder they "
                                    "were saved to, or convert them to Parquet.") from None
    return datasets.load_dataset("parquet", data_files={"train": files}, cache_dir=cache_dir, split="train")


def _open_hub(hub_id: str, cache_dir: str | None, download: bool) -> Source:
    datasets = datasets_package()
    prepared_root = Path(cache_dir or datasets.config.HF_DATASETS_CACHE).expanduser()
    prepared = _prepared_copy(hub_id, cache_dir)
    if prepared is not None:
        log.info("%s: read from the datasets cache %s", hub_id, prepared_root)
        return Source(prepared, hub_id, (prepared_root.resolve(),))
    snapshot = _hub_snapshot(hub_id, download)
    log.info("%s: read from the hub cache %s", hub_id, snapshot)
    return Source(_load_folder(snapshot, cache_dir), hub_id, (snapshot.resolve(), prepared_root.resolve()))


def _prepared_copy(hub_id: str, cache_dir: str | None) -> dict[str, Any] | None:
    """The Arrow copy ``load_dataset(hub_id)`` left in the datasets cache, or None. Read with the
    library's own cache reader, which is what ``load_dataset`` does offline, without its network try."""
    datasets_package()
    from datasets.packaged_modules.cache.cache import Cache

    try:
        builder = Cache(cache_dir=cache_dir, dataset_name=hub_id.split("/")[-1], repo_id=hub_id,
                        version="auto", hash="auto")
    except ValueError as error:
        if "multiple" in str(error):  # several configurations cached: the library asks which
            raise InvalidValueError(f"{hub_id}: {_first_line(error)} Fix: pass the folder of the one you want "
                                    "as data.root.") from None
        return None  # "Couldn't find cache": not there
    return dict(builder.as_dataset())


def hub_cached(hub_id: str, cache_dir: str | None = None) -> bool:
    """Whether ``hub_id`` is in the datasets cache (``cache_dir``, else the default) or the hub
    cache (no network)."""
    if _prepared_copy(hub_id, cache_dir) is not None:
        return True
    return _cached_snapshot(hub_id) is not None


def _cached_snapshot(hub_id: str) -> Path | None:
    hub = import_package("huggingface_hub", "Reading the Hugging Face hub cache")
    try:
        return Path(hub.snapshot_download(hub_id, repo_type="dataset", local_files_only=True))
    except (FileNotFoundError, OSError, ValueError):  # LocalEntryNotFoundError and friends
        return None


def _hub_snapshot(hub_id: str, download: bool) -> Path:
    cached = _cached_snapshot(hub_id)
    if cached is not None:
        return cached
    hub = import_package("huggingface_hub", "Downloading from the Hugging Face hub")
    missing = missing_hub_dataset(hub_id, download)
    if missing.url is None:
        raise DatasetNotFoundError(f"{missing.what} {missing.fix}")
    failure = unreachable_urls([missing.url]).get(missing.url)
    if failure is not None:  # at once, not after the hub client's retries
        raise DatasetNotFoundError(f"{missing.what} Downloading failed ({failure}); this machine may be offline. "
                                   f"{missing.fix}")
    try:
        return Path(hub.snapshot_download(hub_id, repo_type="dataset"))
    except Exception as error:  # the hub raises many types for "no such repo", "gated", "offline"
        raise DatasetNotFoundError(f"{missing.what} Downloading failed ({type(error).__name__}: "
                                   f"{_first_line(error)}). {missing.fix}") from None


def missing_hub_dataset(hub_id: str, download: bool) -> MissingInput:
    """What to say when ``hub_id`` is in no local cache, with the URL to try (None: no download)."""
    from huggingface_hub import constants

    datasets = datasets_package()
    offline = bool(constants.HF_HUB_OFFLINE)
    why = ", and HF_HUB_OFFLINE=1 forbids downloading." if offline else (
        ", and downloads are off." if not download else ".")
    what = (f"Hugging Face dataset {hub_id!r} is not in the datasets cache {datasets.config.HF_DATASETS_CACHE} "
            f"or the hub cache {constants.HF_HUB_CACHE}{why}")
    fix = (f"Fix: on a machine with network access run `hf download --repo-type dataset {hub_id}` (or "
           f"`python -c \"import datasets; datasets.load_dataset('{hub_id}')\"`) and copy its cache here, or set "
           "HF_HOME to a folder that holds it; or pass a local copy as data.root (a save_to_disk folder or the "
           "Parquet files).")
    url = None if offline or not download else f"{constants.ENDPOINT}/datasets/{hub_id}"
    return MissingInput(what, fix, url)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
