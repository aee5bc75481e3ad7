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
* **order**: sorted by path, so that runs and prediction files are reproducible.

Symlinked folders are not followed (``os.walk``'s default): a link cannot make a folder list
itself. Only names are read; nothing is opened.
"""
from __future__ import annotations

import os
from pathlib import Path

from .images import IMAGE_EXTENSIONS


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
    """Every image file under ``folder``, at any depth, skipping hidden files and folders; sorted.

    Example:
        ``photos/{a.jpg, .DS_Store, notes.txt, .cache/t.png, trip/b.PNG}`` ->
        ``["photos/a.jpg", "photos/trip/b.PNG"]``
    """
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs[:] = [name for name in dirs if not is_hidden(name)]  # pruned here: never entered
        found += [os.path.join(parent, name) for name in files if not is_hidden(name) and is_image_name(name)]
    return sorted(found)


__all__ = ["image_files", "is_hidden", "is_image_name", "visible_subfolders"]
