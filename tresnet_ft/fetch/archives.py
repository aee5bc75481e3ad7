"""Safe archive extraction: no member may land outside the destination folder.

Every member is checked before anything is written: absolute names, ``..`` components, links whose
target resolves outside the folder, and device files are refused with a ValueError naming the
member. Tar extraction then also runs with Python's ``filter="data"``, a second line of defence.
Extraction goes to a temporary folder inside the destination and is moved into place at the
end, so an interrupted extraction leaves no half-written dataset behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm
from ..errors import InvalidValueError

log = logging.getLogger(__name__)


def extract_archive(
    archive: str | os.PathLike, dest: str | os.PathLike, progress: bool = True
) -> None:
    """Extract a ``.tar[.gz|.bz2|.xz]`` or ``.zip`` archive into ``dest``, refusing unsafe members.

    Raises:
        ValueError: the archive has a member that would escape ``dest``, or is not a tar/zip.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    staging = dest / f".extracting-{archive.name}"
    shutil.rmtree(staging, ignore_errors=True)  # leftovers of an interrupted run
    staging.mkdir()
    try:
        if tarfile.is_tarfile(archive):
            _extract_tar(archive, staging, progress)
        elif zipfile.is_zipfile(archive):
            _extract_zip(archive, staging, progress)
        else:
            raise InvalidValueError(f"Expected a tar or zip archive, but {archive} is neither.")
        _merge_into(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_member_name(name: str, archive: Path) -> PurePosixPath:
    """Refuse absolute names and ``..`` components; return the member's relative path."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise InvalidValueError(f"Refusing to extract {archive}: member {name!r} has an absolute path.")
    if ".." in path.parts:
        raise InvalidValueError(f"Refusing to extract {archive}: member {name!r} climbs out with '..'.")
    return path


def _check_link_target(member: tarfile.TarInfo, archive: Path) -> None:
    # A symlink's target is relative to the link's folder; a hard link's to the archive root.
    base = PurePosixPath(member.name).parent if member.issym() else PurePosixPath()
    target = member.linkname.replace("\\", "/")
    if target.startswith("/") or not _stays_inside(base / target):
        raise InvalidValueError(
            f"Refusing to extract {archive}: link {member.name!r} points outside the folder "
            f"({member.linkname!r})."
        )


def _stays_inside(path: PurePosixPath) -> bool:
    depth = 0
    for part in path.parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            return False
    return True


def _extract_tar(archive: Path, staging: Path, progress: bool) -> None:
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            check_member_name(member.name, archive)
            if member.issym() or member.islnk():
                _check_link_target(member, archive)
            elif not (member.isfile() or member.isdir()):
                raise InvalidValueError(
                    f"Refusing to extract {archive}: member {member.name!r} is a device or fifo."
                )
        for member in tqdm(
            members, desc=f"extract {archive.name}", unit="file", disable=not progress
        ):
            tar.extract(member, staging, filter="data")


def _extract_zip(archive: Path, staging: Path, progress: bool) -> None:
    with zipfile.ZipFile(archive) as handle:
        infos = handle.infolist()
        for info in infos:
            check_member_name(info.filename, archive)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise InvalidValueError(
                    f"Refusing to extract {archive}: member {info.filename!r} is a link."
                )
        for info in tqdm(infos, desc=f"extract {archive.name}", unit="file", disable=not progress):
            handle.extract(info, staging)


def _merge_into(source: Path, dest: Path) -> None:
    """Move everything under ``source`` into ``dest``, merging folders that already exist."""
    for entry in source.iterdir():
        target = dest / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir():
            _merge_into(entry, target)
        else:
            os.replace(entry, target)
