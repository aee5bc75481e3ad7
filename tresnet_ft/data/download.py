"""Getting dataset files onto disk: streamed, resumable, checksum-verified downloads.

``ensure_dataset_files`` is what each dataset calls: files a user already placed in the official
layout are used as they are; missing ones are downloaded (and archives extracted safely) when
allowed; otherwise a :class:`DatasetNotFoundError` names the dataset, the folder it looked in and
the files to put there.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .archives import extract_archive

log = logging.getLogger(__name__)

DATA_ROOT_ENV = "TRESNET_FT_DATA"
CHUNK_BYTES = 1 << 20
USER_AGENT = "tresnet-ft (dataset download)"


def default_data_root() -> Path:
    """``$TRESNET_FT_DATA`` if set, else ``~/.cache/tresnet-ft/datasets``."""
    configured = os.environ.get(DATA_ROOT_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "tresnet-ft" / "datasets"


@dataclass(frozen=True)
class RemoteFile:
    """One published file: where it lives, its name on disk, its MD5, and whether to unpack it."""

    url: str
    filename: str
    md5: str | None
    extract_to: str | None = None  # folder (relative to the dataset folder) to unpack into


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not on disk and could not be downloaded."""


def file_md5(path: str | os.PathLike) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(
    url: str,
    dest: str | os.PathLike,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Stream ``url`` to ``dest``, resuming a previous partial download, and verify its MD5.

    Bytes go to ``dest + ".part"`` first. If that exists, the download asks the server for the
    rest (HTTP Range); a server that answers with the whole file restarts it cleanly. The file is
    moved to ``dest`` only once complete and verified.

    Raises:
        ValueError: the MD5 does not match (the bad file is removed).
        ConnectionError: the transfer ended early (the partial file is kept for a resume).
        urllib.error.URLError: the server cannot be reached.
    """
    dest = Path(dest)
    if dest.exists() and _matches(dest, md5, remove_if_not=True):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        _stream(url, part, progress, timeout)
    except urllib.error.HTTPError as error:
        if error.code != 416:  # 416: the partial file is already complete, or stale: restart
            raise
        part.unlink(missing_ok=True)
        _stream(url, part, progress, timeout)
    if md5 is not None:
        actual = file_md5(part)
        if actual != md5:
            part.unlink()
            raise ValueError(
                f"Checksum mismatch for {url}: expected MD5 {md5}, but got {actual}. The "
                f"download was removed; run again to retry, or place a good copy at {dest}."
            )
    os.replace(part, dest)
    return dest


def _matches(path: Path, md5: str | None, remove_if_not: bool) -> bool:
    if md5 is None:
        return True
    actual = file_md5(path)
    if actual == md5:
        return True
    log.warning("%s has MD5 %s, expected %s: removing it and downloading again.", path, actual, md5)
    if remove_if_not:
        path.unlink()
    return False


def _stream(url: str, part: Path, progress: bool, timeout: float) -> None:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with urllib.request.urlopen(
        urllib.request.Request(url, headers=headers), timeout=timeout
    ) as response:
        resumed = offset > 0 and getattr(response, "status", None) == 206
        if offset and not resumed:
            log.info("%s: server does not resume downloads; starting over.", url)
            offset = 0
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length else None
        received = offset
        with (
            open(part, "ab" if resumed else "wb") as handle,
            tqdm(
                total=expected,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name[: -len(".part")],
                disable=not progress,
            ) as bar,
        ):
            try:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    handle.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except http.client.IncompleteRead:
                pass  # reported below with the byte counts
    if expected is not None and received < expected:
        raise ConnectionError(
            f"Download of {url} stopped after {received} of {expected} bytes; run again to resume."
        )


def ensure_dataset_files(
    dataset: str,
    folder: Path,
    required: Sequence[str],
    sources: Sequence[RemoteFile],
    download: bool,
    progress: bool = True,
) -> None:
    """Make sure ``folder`` holds every path in ``required``, downloading ``sources`` if needed.

    Raises:
        DatasetNotFoundError: files are missing and downloading is off or failed; the message
            names the dataset, the folder, the missing files and where to get them.
    """
    missing = [name for name in required if not (folder / name).exists()]
    if not missing:
        return
    if not download or not sources:
        raise DatasetNotFoundError(_not_found_message(dataset, folder, missing, sources, None))
    try:
        for source in sources:
            local = download_file(source.url, folder / source.filename, source.md5, progress)
            if source.extract_to is not None:
                extract_archive(local, folder / source.extract_to, progress)
    except (
        urllib.error.URLError,
        ConnectionError,
        TimeoutError,
        http.client.HTTPException,
    ) as error:
        reason = getattr(error, "reason", None) or error
        raise DatasetNotFoundError(
            _not_found_message(dataset, folder, missing, sources, reason)
        ) from error
    still_missing = [name for name in required if not (folder / name).exists()]
    if still_missing:
        raise ValueError(
            f"{dataset}: downloaded and extracted the published files into {folder}, but expected "
            f"{still_missing} and they are not there. The published layout may have changed."
        )


def _not_found_message(
    dataset: str,
    folder: Path,
    missing: Sequence[str],
    sources: Sequence[RemoteFile],
    reason: object,
) -> str:
    lines = [f"Dataset {dataset!r} not found in {folder}: missing {', '.join(missing)}."]
    if reason is not None:
        lines.append(f"Downloading failed ({reason}); this machine may be offline.")
    if sources:
        lines.append("Fix: put these published files in that folder (archives unpacked in place):")
        lines += [
            f"  {source.filename}  from {source.url}  (MD5 {source.md5})" for source in sources
        ]
        lines.append("or run again with download=True on a machine with network access.")
    return "\n".join(lines)
