"""Which files under a folder are images: the one rule shared by training and prediction.

Training folders (:mod:`tresnet_ft.data.folder`) and ``tresnet-ft predict`` folders
(:mod:`tresnet_ft.inference.inputs`) both list images here, so a folder holds the same images
whichever of the two reads it:

* **hidden**: a name starting with ``.`` at any level below the folder given, file or folder
  (``.DS_Store``, ``._photo.jpg`` from macOS archives, ``.git/``, ``.ipynb_checkpoints/``); a
  hidden folder is not entered. The folder given is read even if its own name starts with ``.``.
  Nothing else is hidden: training used to skip names starting with ``__`` as well, prediction
  did not; such names are now ordinary on both sides, because skipping them silently dropped
  real images (``__0001.jpg``). The one exception is the ``__MACOSX/`` folder that macOS adds to
  zip archives: it is hidden too, so that an unzipped flat-layout dataset does not gain a class
  named ``__MACOSX``.
* **image**: a suffix in :data:`~tresnet_ft.data.images.IMAGE_EXTENSIONS`, any letter case.
* **regular file**: after following links, the entry is a regular file. A link to a photo is
  listed; a FIFO (reading it blocks forever), a link to ``/dev/zero`` (reading it never ends), a
  socket or a broken link are left out, with one warning naming them.
* **order**: sorted by path, so that runs and prediction files are reproducible.

Symlinked folders are not followed (``os.walk``'s default): a link cannot make a folder list
itself. Only names and file kinds are read (the kind comes with the folder listing on most file
systems; links cost one ``stat``); nothing is opened.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from .images import IMAGE_EXTENSIONS
from .unreadable import describe_paths

log = logging.getLogger(__name__)


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is hidden (starts with ``.``, or is macOS's ``__MACOSX``) and so is never listed."""
    return name.startswith(".") or name == "__MACOSX"


def is_image_name(name: str) -> bool:
    """Whether ``name`` has an image suffix (``.jpg``, ``.PNG``, ...)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def visible_subfolders(folder: Path) -> list[Path]:
    """The folders directly in ``folder`` that are not hidden, sorted by name."""
    return sorted((entry for entry in Path(folder).iterdir() if entry.is_dir() and not is_hidden(entry.name)),
                  key=lambda entry: entry.name)


def image_files(folder: Path) -> list[str]:
    """Every image file under ``folder``, at any depth, skipping hidden files and folders and
    anything that is not a regular file; sorted.

    Example:
        ``photos/{a.jpg, .DS_Store, notes.txt, .cache/t.png, trip/b.PNG, pipe.jpg (a FIFO)}`` ->
        ``["photos/a.jpg", "photos/trip/b.PNG"]``
    """
    found, not_regular, pending = [], [], [os.fspath(folder)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                listed = list(entries)
        except OSError:  # an unreadable folder is left out, as os.walk does
            continue
        for entry in listed:
            if is_hidden(entry.name):
                continue  # a hidden folder is never entered
            if _is_dir(entry):
                if not entry.is_symlink():
                    pending.append(entry.path)
            elif is_image_name(entry.name):
                (found if _is_regular_file(entry) else not_regular).append(entry.path)
    if not_regular:
        log.warning("%s: left out %d image name(s) that are not regular files: %s", folder, len(not_regular),
                    describe_paths(sorted(not_regular), [_describe_entry(path) for path in sorted(not_regular)]))
    return sorted(found)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_regular_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()  # follows links; no system call unless the entry is a link
    except OSError:
        return False


def _describe_entry(path: str) -> str:
    if not os.path.exists(path):
        return "a broken link"
    mode = os.stat(path).st_mode
    kinds = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
             stat.S_IFSOCK: "a socket"}
    return kinds.get(stat.S_IFMT(mode), "not a regular file")


__all__ = ["image_files", "is_hidden", "is_image_name", "visible_subfolders"]
