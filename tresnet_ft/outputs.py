"""Every file the package writes for the user (predictions, exports, sidecars, checkpoints) goes
through :func:`atomic_output`: it is written whole or not at all, and only where a file of ours may go.

* **Whole or not at all.** The bytes go to a hidden ``.<name>.partial`` beside the target (the
  same folder, so the final ``os.replace`` is a rename within one filesystem, which is atomic),
  are flushed to disk, then renamed over the target. A reader, or a run killed at any moment, sees
  the old file or the new one, never a short file that looks complete. An error (any exception,
  Ctrl-C included) removes the ``.partial``; only a hard kill (SIGKILL, power cut) can leave one
  behind, and the next write of the same target replaces it.
* **Only where a file of ours may go.** A target that exists must be a regular file (or a link
  to one, which is then written through, as ``open(path, "w")`` would): a folder, a device such
  as ``/dev/null``, a FIFO or a socket is refused, since the rename would replace it with a
  plain file. A target that is one of the command's inputs (the same file by
  :func:`os.path.samefile`, e.g. the table being predicted) is refused too.
* **A full disk is the user's to fix.** ``ENOSPC``/``EDQUOT`` while writing becomes
  :class:`DiskFullError`: one line naming the file, the free space, that the previous file is
  intact, and the fix.

Example:
    >>> with atomic_output(Path("predictions.csv")) as partial:       # doctest: +SKIP
    ...     partial.write_text("path,top1_label\\n")
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .errors import DiskFullError, InvalidValueError

DISK_FULL_ERRNOS = frozenset(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code)

# What a non-regular file is, for the refusal message.
_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


def partial_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place (hidden, same folder)."""
    return path.with_name(f".{path.name}.partial")


def check_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (),
                 example_name: str = "output", fix: str | None = None) -> Path:
    """Refuse an output path that is not ours to replace; return the file to write.

    Args:
        path: the output the user named.
        inputs: the files the command reads (checkpoint, tables, images); the output must be none of them.
        example_name: a file name for the fixes (``-o FOLDER/example_name`` when ``path`` is a folder).
        fix: the fix to give instead, for every refusal (e.g. for a file named after another output).

    Returns:
        ``path`` itself, or for a symbolic link the file it points to (written through, not replaced).

    Raises:
        InvalidValueError: ``path`` is a folder, a device, a FIFO or a socket (or a link to one), a
            path under a file, or the same file as one of ``inputs``.
    """
    path = Path(path)
    try:
        status = os.stat(path)  # follows links: a link to /dev/null is /dev/null
    except FileNotFoundError:
        return Path(os.path.realpath(path)) if path.is_symlink() else path
    except NotADirectoryError:
        raise InvalidValueError(f"Expected the output {path} to be a path in a folder, but {_file_above(path)} "
                                "is a file. Fix: choose another output path.") from None
    if stat.S_ISDIR(status.st_mode):
        raise InvalidValueError(f"Expected the output to be a file path, but {path} is a folder. "
                                f"Fix: {fix or f'name a file inside it, e.g. -o {path / example_name}'}.")
    if not stat.S_ISREG(status.st_mode):
        kind = next((name for test, name in _KINDS if test(status.st_mode)), "not a regular file")
        other = f"choose another path, e.g. -o {example_name}"
        raise InvalidValueError(f"Expected the output to be a new or regular file, but {path} is {kind}; writing "
                                f"the output would replace it. Fix: {fix or other}.")
    for source in inputs:
        if _same_file(status, source):
            other = f"choose another output path, e.g. -o {path.with_stem(path.stem + '_out').name}"
            raise InvalidValueError(f"Expected the output to be a file other than the inputs, but {path} is the "
                                    f"input {source}; writing it would replace that input. Fix: {fix or other}.")
    return Path(os.path.realpath(path)) if path.is_symlink() else path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (),
                  example_name: str = "output", disk_full_fix: str | None = None,
                  fix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an error, make it ``path``.

    The block writes the whole output to the yielded path (and closes it). Then it is flushed to
    disk and renamed over ``path`` (the folder is synced too, so the rename survives a power cut).
    On any exception the temporary file is removed and ``path`` is left as it was.

    Args:
        path, inputs, example_name, fix: checked first with :func:`check_output`.
        disk_full_fix: the fix to name when the disk fills up (default: free space, or another folder).

    Raises:
        InvalidValueError: see :func:`check_output`.
        DiskFullError: ``ENOSPC``/``EDQUOT`` inside the block or while flushing; ``path`` is untouched.
    """
    target = check_output(path, inputs, example_name, fix)
    _make_folder(target.parent)
    partial = partial_path(target)
    partial.unlink(missing_ok=True)  # a stale one from a killed run, possibly not ours to write through
    try:
        yield partial
        _keep_mode_of(target, partial)
        _sync(partial)
        os.replace(partial, target)
        _sync(target.parent)
    except OSError as error:
        if error.errno in DISK_FULL_ERRNOS and not isinstance(error, DiskFullError):
            full = DiskFullError(_disk_full_message(Path(path), target, error, disk_full_fix))
            full.errno = error.errno  # one argument keeps str() to the message; errno stays for callers
            raise full from error
        raise
    finally:
        partial.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (),
                  is_ours: Callable[[Path], bool] = lambda folder: False,
                  fix: str | None = None) -> Iterator[Path]:
    """Yield a hidden empty folder beside ``path``; when the block ends without an error, make it ``path``.

    The folder counterpart of :func:`atomic_output`: files go to ``.<name>.partial/``, are flushed,
    and the folder is renamed into place. A previous ``path`` is replaced only when ``is_ours(path)``
    says it is an earlier output of the same kind (or it is empty); it is first renamed to
    ``.<name>.old`` and removed once the new one is in place, so a kill at any moment leaves the old
    folder, the new one, or (between the two renames) the old one under its hidden name, never a
    half-written folder under ``path``. On any exception the partial folder is removed.

    Raises:
        InvalidValueError: ``path`` is a file, a device or a link; a non-empty folder ``is_ours``
            refuses; or a folder holding one of ``inputs``.
        DiskFullError: ``ENOSPC``/``EDQUOT`` inside the block; ``path`` is untouched.
    """
    target = Path(path)
    _check_output_folder(target, inputs, is_ours, fix)
    _make_folder(target.parent)
    partial, old = target.with_name(f".{target.name}.partial"), target.with_name(f".{target.name}.old")
    for stale in (partial, old):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
        for file in (p for p in partial.rglob("*") if p.is_file()):
            _sync(file)
        if target.is_dir():
            os.rename(target, old)
        os.rename(partial, target)
        _sync(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as error:
        if error.errno in DISK_FULL_ERRNOS and not isinstance(error, DiskFullError):
            full = DiskFullError(_disk_full_message(target, target, error, None))
            full.errno = error.errno
            raise full from error
        raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _check_output_folder(target: Path, inputs: Iterable[str | os.PathLike], is_ours: Callable[[Path], bool],
                         fix: str | None) -> None:
    fix = fix or f"choose a new folder, e.g. -o {target.with_name(target.name + '-new')}"
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        kind = "a link" if target.is_symlink() else "a file" if target.is_file() else "not a folder"
        raise InvalidValueError(f"Expected the output {target} to be a new folder, but it is {kind}; writing the "
                                f"output would replace it. Fix: {fix}.")
    resolved = target.resolve()
    for source in inputs:
        if Path(source).exists() and Path(source).resolve().is_relative_to(resolved):
            raise InvalidValueError(f"Expected the output folder {target} not to hold the input {source}; replacing "
                                    f"the folder would delete it. Fix: {fix}.")
    if target.is_dir() and any(target.iterdir()) and not is_ours(target):
        raise InvalidValueError(f"Expected the output {target} to be a new or empty folder, or an earlier output of "
                                f"this command, but it holds other files. Fix: {fix}.")


def _disk_full_message(named: Path, target: Path, error: OSError, fix: str | None) -> str:
    # Starts with strerror ("No space left on device" / "Disk quota exceeded"), the words users search for.
    reason = os.strerror(error.errno or errno.ENOSPC)
    elsewhere = f" ({error})" if error.filename and Path(error.filename) not in (target, partial_path(target)) else ""
    free = _free_space(target.parent)
    kept = (f"The previous {named.name} is intact (nothing was replaced)" if target.exists()
            else f"Nothing was written to {named}")
    fix = fix or "free some space there, or write the output to another disk"
    return f"{reason} while writing {named}{elsewhere}{free}. {kept}. Fix: {fix}."


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""  # the free space is a hint; not being able to read it must not hide the real error
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if free >= size:
            return f"; {free / size:.1f} {unit} free in {folder}"
    return f"; {free} bytes free in {folder}"


def _same_file(status: os.stat_result, source: str | os.PathLike) -> bool:
    """Whether ``source`` is the file ``status`` describes (hard links and symbolic links included)."""
    try:
        other = os.stat(source)
    except OSError:
        return False  # an input that is not there cannot be overwritten
    return (other.st_dev, other.st_ino) == (status.st_dev, status.st_ino)


def _file_above(path: Path) -> Path:
    """The first component of ``path`` that is a file, not a folder (why ``path`` cannot exist)."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return path.parent


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InvalidValueError(f"Expected {folder} to be a folder for the output, but {_file_above(folder / 'x')} "
                                "is a file. Fix: choose another output path.") from None


def _keep_mode_of(target: Path, partial: Path) -> None:
    """A replaced file keeps its permission bits, as it would when overwritten in place."""
    with contextlib.suppress(FileNotFoundError):
        os.chmod(partial, stat.S_IMODE(os.stat(target).st_mode))


def _sync(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to disk; a folder's sync makes a rename in it durable."""
    if path.is_dir() and not hasattr(os, "O_DIRECTORY"):
        return  # Windows cannot open a folder to sync it
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


__all__ = ["DiskFullError", "atomic_folder", "atomic_output", "check_output", "partial_path"]
