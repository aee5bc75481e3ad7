"""Run folders on disk: ``<runs>/<recipe>/version_<N>/checkpoints/{best,last}.ckpt``.

``<runs>`` is ``--trainer.default_root_dir`` (``runs`` by default, see
:func:`tresnet_ft.training.loggers.runs_root`). This module is the one reader of ``version_<N>``
names: the next free version for a new run, the checkpoint that ``--ckpt_path last`` (or
``best``) means, and which run folder a checkpoint belongs to, so that a resumed run keeps writing
into its own folder. Plain Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from ..errors import InvalidValueError, MissingInputError

CHECKPOINT_ALIASES = ("last", "best")
# ASCII digits only: "version_٣" is not a run of ours, whatever int() would make of it.
_VERSION = re.compile(r"^version_([0-9]+)$")


@dataclass(frozen=True)
class RunFolder:
    """``save_dir/name/version_<version>``: where a run's loggers and checkpoints write."""

    save_dir: Path
    name: str
    version: int

    @property
    def path(self) -> Path:
        return self.save_dir / self.name / f"version_{self.version}"


def run_versions(runs_dir: Path, run_name: str) -> list[tuple[int, Path]]:
    """``(N, path)`` of every ``version_<N>`` entry in ``runs_dir/run_name``, oldest first.

    Files count too: a new run must not take a name that is already used, whatever holds it.
    """
    entries = (Path(runs_dir) / run_name).glob("version_*")
    return sorted((int(match.group(1)), entry) for entry in entries if (match := _VERSION.match(entry.name)))


def next_version(runs_dir: Path, run_name: str) -> int:
    """The first ``N`` above every ``version_<N>`` of ``run_name`` under ``runs_dir`` (0 for the first run)."""
    return max((version for version, _ in run_versions(runs_dir, run_name)), default=-1) + 1


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
    for _, folder in reversed(run_versions(runs_dir, run_name)):
        candidate = folder / "checkpoints" / f"{alias}.ckpt"
        if candidate.is_file():
            return candidate
    where = Path(runs_dir) / run_name / "version_*" / "checkpoints" / f"{alias}.ckpt"
    raise MissingInputError(
        f"--ckpt_path {alias}: no {alias}.ckpt found at {where} (runs of recipe {run_name!r} under "
        f"{Path(runs_dir).resolve()}). Fix: pass the run's --trainer.default_root_dir (without it, runs "
        "are under ./runs of the folder the run was started in, or $TRESNET_FT_RUNS), use the same "
        "--recipe, pass the checkpoint file itself, or start a new run without --ckpt_path."
    )


__all__ = ["CHECKPOINT_ALIASES", "RunFolder", "find_checkpoint", "next_version", "run_of_checkpoint",
           "run_versions"]
