"""Bookkeeping for images that cannot be decoded, so one bad file never stops an epoch.

Two moments catch bad files:

* before training, :func:`exclude_unreadable` drops files whose size or header already shows they
  are not images (zero bytes, HTML saved as ``.jpg``, ...) and reports them once;
* while loading, :class:`UnreadableLog` records files that only fail to decode (a corrupt JPEG).
  DataLoader workers are separate processes, so when a log file is attached every worker appends
  one line per bad file to it (short appends are atomic on POSIX), and the main process reads it
  back for one summary (:meth:`UnreadableLog.summary`).

A run of unreadable files does not stop an epoch (each is replaced by the next readable file);
only a high share does: when more than ``max_unreadable_share`` (default 0.5) of the images one
process was asked for are unreadable, once it has been asked for :data:`SHARE_SAMPLE` of them (or
the whole dataset, if smaller), the epoch stops with :class:`TooManyUnreadableError`. In a
shuffled training split that sample is a random one; in a sorted, unshuffled split the first
images decide.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .images import check_image_file
from ..errors import InvalidValueError

log = logging.getLogger(__name__)

SHOWN_PATHS = 5  # how many example paths a report names
DEFAULT_MAX_UNREADABLE_SHARE = 0.5
MAX_SHARE_ENV = "TRESNET_FT_MAX_UNREADABLE_SHARE"
# Images a process is asked for before their unreadable share is judged: few enough to stop a
# hopeless run within seconds, enough that a share above one half is not bad luck.
SHARE_SAMPLE = 256


class TooManyUnreadableError(InvalidValueError):
    """Too large a share of a dataset's images cannot be read: the run stops, naming the share,
    the folder and the setting that allows more."""

    def __init__(self, message: str) -> None:
        # Raised in a DataLoader worker, it is re-raised in the main process by calling this class
        # with PyTorch's "Caught ... Original Traceback ..." text; keep only our own line, so the
        # command line still prints one line.
        marker = f"{type(self).__name__}: "
        if message.startswith("Caught ") and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


def resolve_max_unreadable_share(share: float | None = None) -> float:
    """``share`` if given, else ``$TRESNET_FT_MAX_UNREADABLE_SHARE``, else 0.5; a number in (0, 1]."""
    source, raw = "max_unreadable_share", share
    if share is None:
        source, raw = f"the environment variable {MAX_SHARE_ENV}", os.environ.get(MAX_SHARE_ENV, "").strip()
        if not raw:
            return DEFAULT_MAX_UNREADABLE_SHARE
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value <= 1.0:  # also rejects NaN
        raise InvalidValueError(f"Expected {source} to be a share in (0, 1], but got {raw!r}. Fix: e.g. 0.9 "
                                "stops only when more than 90% of the images are unreadable; 1 only when none is readable.")
    return value


def dataset_folder(paths: Sequence[str]) -> str:
    """The folder every path lies in, for messages (``.`` for relative paths in the working folder)."""
    try:
        return os.path.commonpath([os.path.dirname(path) or "." for path in paths]) or "."
    except ValueError:  # absolute and relative paths mixed
        return os.path.dirname(paths[0]) or "."


def too_many_unreadable(bad: int, asked: int, max_share: float, folder: str,
                        examples: Sequence[tuple[str, str]], every_file: bool = False) -> TooManyUnreadableError:
    """The error that stops an epoch: ``bad`` of the ``asked`` images were unreadable (``every_file``:
    all ``bad`` images of the dataset were tried and none could be read)."""
    shown = describe_paths([path for path, _ in examples], [reason for _, reason in examples])
    share = f"all {bad} images in {folder} are unreadable" if every_file else (
        f"{bad} of the {asked} images read from {folder} ({bad / asked:.0%}) are unreadable")
    return TooManyUnreadableError(
        f"{share}, more than the limit of {max_share:.0%}: {shown}. Fix: check those files (is this the "
        "right folder?), or allow a larger share with ImageDataModule's max_unreadable_share "
        "(--data.max_unreadable_share 0.9 on the command line) or the environment variable "
        f"{MAX_SHARE_ENV} (1 stops only when no image is readable)."
    )


def describe_paths(paths: Sequence[str], reasons: Sequence[str] | None = None) -> str:
    """``"a (why), b (why), ... and N more"`` for a report line."""
    shown = [
        f"{path} ({reasons[i]})" if reasons else str(path)
        for i, path in enumerate(paths[:SHOWN_PATHS])
    ]
    more = len(paths) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def exclude_unreadable(paths: Sequence[str | os.PathLike], dataset: str) -> np.ndarray:
    """Check every file's size and header; return a keep-mask ``[N]`` (bool).

    Excluded files are reported once with their count and the first few paths. Threads overlap
    the file opens, which dominate on network and cold disks.
    """
    with ThreadPoolExecutor(max_workers=8) as pool:
        reasons = list(pool.map(check_image_file, paths, chunksize=256))
    keep = np.array([reason is None for reason in reasons], dtype=bool)
    if not keep.all():
        bad = [str(paths[i]) for i in np.flatnonzero(~keep)]
        why = [reasons[i] for i in np.flatnonzero(~keep)]
        log.warning(
            "%s: excluded %d unreadable image file(s) of %d: %s",
            dataset,
            len(bad),
            len(paths),
            describe_paths(bad, why),
        )
    return keep


def keep_readable(
    paths: Sequence[str | os.PathLike], targets: np.ndarray, dataset: str
) -> tuple[list[str], np.ndarray]:
    """Drop the files :func:`exclude_unreadable` rejects, with their targets ``[N]``/``[N, K]``."""
    keep = exclude_unreadable(paths, dataset)
    return [str(path) for path, ok in zip(paths, keep, strict=True) if ok], targets[keep]


class UnreadableLog:
    """Counts images skipped at load time, across DataLoader worker processes.

    Args:
        log_file: a file every process appends ``path<TAB>reason`` lines to. Without one, the
            log is per process and the first skip is logged as a warning right away.
    """

    def __init__(self, log_file: str | os.PathLike | None = None) -> None:
        self.log_file = None if log_file is None else str(log_file)
        self._local: list[tuple[str, str]] = []

    def record(self, path: str, reason: str) -> None:
        """Remember one skipped image (called in whichever process decoded it)."""
        first = not self._local
        self._local.append((path, reason))
        if self.log_file is not None:
            line = f"{path}\t{reason}".replace("\n", " ") + "\n"
            with open(self.log_file, "a", encoding="utf-8") as handle:
                handle.write(line)
            log.debug("skipped unreadable image %s (%s)", path, reason)
        elif first:
            log.warning(
                "Skipped unreadable image %s (%s); a substitute sample was used. Further skips "
                "are counted in the dataset's `unreadable` log.",
                path,
                reason,
            )

    def entries(self) -> list[tuple[str, str]]:
        """All ``(path, reason)`` pairs recorded so far (all processes when a file is attached)."""
        if self.log_file is None:
            return list(self._local)
        if not Path(self.log_file).exists():
            return []
        lines = Path(self.log_file).read_text(encoding="utf-8").splitlines()
        return [tuple(line.split("\t", 1)) for line in lines if "\t" in line]  # type: ignore[misc]

    def summary(self) -> str | None:
        """One report line (distinct files, first few paths), or None if nothing was skipped."""
        distinct = dict(self.entries())
        if not distinct:
            return None
        paths = list(distinct)
        return (
            f"Skipped {len(paths)} unreadable image(s) while loading (each time replaced by "
            f"another sample): {describe_paths(paths, list(distinct.values()))}"
        )
