"""Getting dataset files onto disk: streamed, resumable, checksum-verified downloads.

``ensure_dataset_files`` is what each dataset calls: files a user already placed in the official
layout are used as they are; missing ones are downloaded (and archives extracted safely) when
allowed; otherwise a :class:`DatasetNotFoundError` names the dataset, the folder it looked in and
the files to put there. ``unreachable_urls`` asks servers whether they answer at all, so that a
run can list everything it cannot fetch before it starts (``tresnet_ft.preflight``).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .archives import extract_archive
from ..errors import InvalidValueError, MissingInputError

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


@dataclass(frozen=True)
class MissingInput:
    """A file a run needs that is not on disk: what it is, how to put it there by hand, and the
    URL it would be downloaded from (None: it will not be downloaded, e.g. downloads are off)."""

    what: str
    fix: str
    url: str | None = None


@dataclass(frozen=True)
class MissingFiles:
    """Files of a dataset that are not in its folder, and the published files that provide them."""

    dataset: str
    folder: Path
    missing: tuple[str, ...]
    sources: tuple[RemoteFile, ...]

    def what(self) -> str:
        return f"Dataset {self.dataset!r} not found in {self.folder}: missing {', '.join(self.missing)}."

    def fix(self, download: bool) -> str:
        """How to get the files; advises turning downloads on only when they are off."""
        if not self.sources:
            return ""
        lines = ["Fix: put these published files in that folder (archives unpacked in place):"]
        lines += [f"  {s.filename}  from {s.url}  (MD5 {s.md5})" for s in self.sources]
        lines.append("or run again on a machine with network access." if download
                     else "or run again with download=True on a machine with network access.")
        return "\n".join(lines)

    def as_input(self, download: bool) -> MissingInput:
        # One URL stands for all: a dataset's files come from one server.
        return MissingInput(self.what(), self.fix(download),
                            self.sources[0].url if download and self.sources else None)


class DatasetNotFoundError(MissingInputError):
    """The dataset's files are not on disk and could not be downloaded.

    ``files`` says which, when known, so that a check before training can list them together
    with everything else that is missing.
    """

    def __init__(self, message: str, files: MissingFiles | None = None) -> None:
        super().__init__(message)
        self.files = files


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
            raise InvalidValueError(
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
    files = MissingFiles(dataset, folder, tuple(missing), tuple(sources))
    if not download or not sources:
        raise DatasetNotFoundError(_not_found_message(files, download, None), files)
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
        raise DatasetNotFoundError(_not_found_message(files, download, reason), files) from error
    still_missing = [name for name in required if not (folder / name).exists()]
    if still_missing:
        raise InvalidValueError(
            f"{dataset}: downloaded and extracted the published files into {folder}, but expected "
            f"{still_missing} and they are not there. The published layout may have changed."
        )


def _not_found_message(files: MissingFiles, download: bool, reason: object) -> str:
    lines = [files.what()]
    if reason is not None:
        lines.append(f"Downloading failed ({reason}); this machine may be offline.")
    fix = files.fix(download)
    return "\n".join(lines + ([fix] if fix else []))


# -- can the network be reached at all? -------------------------------------------------------

PROBE_TIMEOUT_S = 3.0


def unreachable_urls(urls: Iterable[str], timeout: float = PROBE_TIMEOUT_S) -> dict[str, str]:
    """The URLs among ``urls`` whose server does not answer a HEAD request within ``timeout``
    seconds in all, each with the reason. Any HTTP answer, an error status included, counts as
    reached; so do non-HTTP URLs (``file://``). Proxies apply as for a download.

    All are asked at once, each in a daemon thread: name resolution has no timeout of its own, and
    an unanswered one must hold up neither the answer nor the end of the process.
    """
    failures: dict[str, str] = {}
    threads = {url: threading.Thread(target=_probe, args=(url, timeout, failures), daemon=True)
               for url in set(urls) if urllib.parse.urlsplit(url).scheme in ("http", "https")}
    for thread in threads.values():
        thread.start()
    deadline = time.monotonic() + timeout
    for url, thread in threads.items():
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            failures.setdefault(url, f"no answer within {timeout:g} s")
    return dict(failures)  # a copy: a thread past the deadline may still write to the original


def _probe(url: str, timeout: float, failures: dict[str, str]) -> None:
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError as answer:  # the server answered
        answer.close()
    except urllib.error.URLError as error:
        failures[url] = str(error.reason)
    except (OSError, http.client.HTTPException) as error:  # timeouts, resets, bad answers
        failures[url] = str(error) or type(error).__name__
