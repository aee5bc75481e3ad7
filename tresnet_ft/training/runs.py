"""Run folders on disk: ``<runs>/<recipe>/version_<N>/checkpoints/{best,last}.ckpt``.

``<runs>`` is ``--trainer.default_root_dir`` (``runs`` by default, see
:func:`tresnet_ft.training.loggers.runs_root`). This module is the one reader of ``version_<N>``
names: the folder a new run claims, the checkpoint that ``--ckpt_path last`` (or ``best``) means,
and which run folder a checkpoint belongs to, so that a resumed run keeps writing into its own
folder. Plain Python.

A new run claims its folder by creating it (:func:`claim_run_folder`): two runs of one recipe
started together get two folders. With several processes, only the one that starts the run claims
(:func:`starts_the_run`); it leaves the folder in :data:`RUN_FOLDER_VARIABLE`, which Lightning's
DDP launcher hands to the workers it starts (:func:`new_run_folder`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, MutableMapping

from ..errors import InvalidValueError, MissingInputError

CHECKPOINT_ALIASES = ("last", "best")
# ASCII digits only: "version_٣" is not a run of ours, whatever int() would make of it.
_VERSION = re.compile(r"^version_([0-9]+)$")
# The claimed folder of the run this process belongs to: set by the process that claimed it, read
# by DDP workers, which Lightning starts by running the same command with a copy of os.environ.
RUN_FOLDER_VARIABLE = "TRESNET_FT_RUN_FOLDER"
# What launchers set in a process that is not the first: Lightning's own DDP launcher (LOCAL_RANK,
# NODE_RANK), torchrun (RANK, GROUP_RANK), SLURM and LSF. Unset or 0 in the process that starts a run.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


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


def claim_run_folder(runs_dir: Path, run_name: str) -> RunFolder:
    """Create ``runs_dir/run_name/version_<N>`` for a new run, N the first free number, and return it.

    The creation is the claim: ``os.mkdir`` fails when the folder exists, also when another run
    created it a moment ago, and the next number is tried. Checking first and creating later (as
    the loggers do) let two runs started together share ``version_0``.
    """
    parent = Path(runs_dir) / run_name
    parent.mkdir(parents=True, exist_ok=True)
    version = next_version(runs_dir, run_name)
    while True:
        try:
            os.mkdir(parent / f"version_{version}")
            return RunFolder(Path(runs_dir), run_name, version)
        except FileExistsError:
            version += 1
        except FileNotFoundError:  # a failed start of another run gave back the (empty) parent just now
            parent.mkdir(parents=True, exist_ok=True)


def starts_the_run(environ: Mapping[str, str]) -> bool:
    """Whether this process is the first (or only) one of its run, by the launchers' variables
    (:data:`RANK_VARIABLES`). Lightning's own rank is not set yet when the command line is read,
    and does not see ``NODE_RANK``: on the second node of a run, the main process also has rank 0."""
    return all(environ.get(name, "").strip() in ("", "0") for name in RANK_VARIABLES)


def new_run_folder(runs_dir: Path, run_name: str, environ: MutableMapping[str, str], claim: bool = True) -> RunFolder:
    """The folder of a new run of ``run_name`` under ``runs_dir``, as this process sees it.

    * The process that starts the run claims one (:func:`claim_run_folder`) and puts it in
      ``environ[RUN_FOLDER_VARIABLE]`` for the workers it will start; with ``claim=False`` (help,
      ``--print_config``: nothing will run) it only names the next free one.
    * A worker takes the folder from ``environ`` (Lightning's DDP launcher copies it there).
    * A worker started by another launcher (torchrun, a second node) creates nothing and names
      the next free folder; nothing writes there: the loggers write on global rank 0 only, and
      Lightning sends rank 0's folder to every process for checkpoints (``trainer.log_dir``).
    """
    if starts_the_run(environ):
        if not claim:
            return RunFolder(Path(runs_dir), run_name, next_version(runs_dir, run_name))
        run = claim_run_folder(runs_dir, run_name)
        environ[RUN_FOLDER_VARIABLE] = str(run.path)
        return run
    shared = environ.get(RUN_FOLDER_VARIABLE, "")
    match = _VERSION.match(Path(shared).name)
    # Only a folder of this run's recipe and root: the variable may be left over from another run.
    if match and Path(shared).parent == Path(runs_dir) / run_name:
        return RunFolder(Path(runs_dir), run_name, int(match.group(1)))
    return RunFolder(Path(runs_dir), run_name, next_version(runs_dir, run_name))


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


__all__ = ["CHECKPOINT_ALIASES", "RANK_VARIABLES", "RUN_FOLDER_VARIABLE", "RunFolder", "claim_run_folder",
           "find_checkpoint", "new_run_folder", "next_version", "run_of_checkpoint", "run_versions",
           "starts_the_run"]
