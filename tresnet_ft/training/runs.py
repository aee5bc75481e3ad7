"""Run folders on disk: ``<runs>/<recipe>/version_<N>/checkpoints/{best,last}.ckpt``.

Finding the checkpoint that ``--ckpt_path last`` (or ``best``) means, and which run folder a
checkpoint belongs to, so that a resumed run keeps writing into its own folder. Plain Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from ..errors import InvalidValueError, MissingInputError

CHECKPOINT_ALIASES = ("last", "best")
_VERSION = re.compile(r"^version_(\d+)$")


@dataclass(frozen=True)
class RunFolder:
    """``save_dir/name/version_<version>``: where a run's loggers and checkpoints write."""

    save_dir: Path
    name: str
    version: int

    @property
    def path(self) -> Path:
        return self.save_dir / self.name / f"version_{self.version}"


def run_of_checkpoint(checkpoint: str | Path) -> RunFolder | None:
    """The run folder holding ``checkpoint`` (``.../<name>/version_<N>/checkpoints/x.ckpt``), or
    None when the file lives elsewhere."""
    parts = Path(checkpoint).resolve().parts
    if len(parts) < 5 or parts[-2] != "checkpoints":
        return None
    match = _VERSION.match(parts[-3])
    if match is None:
        return None
    return RunFolder(Path(*parts[:-4]), parts[-4], int(match.group(1)))


def find_checkpoint(runs_dir: Path, run_name: str, alias: str) -> Path:
    """``<alias>.ckpt`` of the newest ``version_<N>`` of ``run_name`` that has one.

    Raises:
        ValueError: ``alias`` is not ``last`` or ``best``.
        FileNotFoundError: no run of ``run_name`` has that checkpoint (the message says where it
            looked and what to do instead).
    """
    if alias not in CHECKPOINT_ALIASES:
        raise InvalidValueError(
            f"Expected a checkpoint alias in {list(CHECKPOINT_ALIASES)}, but got {alias!r}."
        )
    runs = sorted(
        (int(m.group(1)), folder)
        for folder in (runs_dir / run_name).glob("version_*")
        if (m := _VERSION.match(folder.name)) and folder.is_dir()
    )
    for _, folder in reversed(runs):
        candidate = folder / "checkpoints" / f"{alias}.ckpt"
        if candidate.is_file():
            return candidate
    where = runs_dir / run_name / "version_*" / "checkpoints" / f"{alias}.ckpt"
    raise MissingInputError(
        f"--ckpt_path {alias}: no {alias}.ckpt found at {where} (runs of recipe {run_name!r} under "
        f"{runs_dir.resolve()}). Fix: run the command from the folder the run was started in (or set "
        "TRESNET_FT_RUNS to its runs folder), use the same --recipe, pass the checkpoint file itself, "
        "or start a new run without --ckpt_path."
    )


__all__ = ["CHECKPOINT_ALIASES", "RunFolder", "find_checkpoint", "run_of_checkpoint"]
