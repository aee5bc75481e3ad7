"""Helpers for tests that run ``tresnet-ft`` in a subprocess: the command, and test-only callbacks
passed to it with ``--trainer.callbacks+=...`` (the subprocess imports them from this package)."""

from __future__ import annotations

import csv
import logging
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from tresnet_ft.cli.command import main

REPO = Path(__file__).resolve().parents[1]


def error_line(caplog, args: list[str]) -> str:
    """Run ``tresnet-ft ARGS`` in this process; check it failed with exit code 2 and exactly one error line; return it."""
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(args) == 2
    errors = [
        r.getMessage()
        for r in caplog.records
        if r.name == "tresnet_ft" and r.levelno >= logging.ERROR
    ]
    assert len(errors) == 1 and errors[0].startswith("error: "), errors
    return errors[0]


def command_env(cwd: Path, **env: str) -> dict[str, str]:
    """The environment of a ``tresnet-ft`` subprocess: this checkout, offline, runs under ``cwd/runs``."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "200",
        "TRESNET_FT_RUNS": str(cwd / "runs"),
        **env,
    }


def run_command(
    args: list[str], cwd: Path, timeout: float = 600, **env: str
) -> subprocess.CompletedProcess:
    """``python -m tresnet_ft.cli ARGS`` in ``cwd``, waited for, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "tresnet_ft.cli", *args],
        check=False,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=command_env(cwd, **env),
    )


def start_command(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """Like :func:`run_command`, without waiting (``communicate()`` gives stdout and stderr)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tresnet_ft.cli", *args],
        cwd=cwd,
        env=command_env(cwd, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def callback_arg(cls: type, **init_args: Any) -> str:
    """``--trainer.callbacks+=`` value that makes the CLI build ``cls(**init_args)``."""
    return "--trainer.callbacks+=" + json.dumps(
        {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}
    )


def metrics_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def column_by_step(rows: list[dict[str, str]], column: str) -> dict[int, float]:
    """``{step: value}`` for the rows of ``metrics.csv`` where ``column`` is filled."""
    return {int(row["step"]): float(row[column]) for row in rows if row.get(column)}


class KillAtStep(Callback):
    """SIGKILL this process once ``global_step`` reaches ``step``: a crash nothing can clean up after."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, *args: Any
    ) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class DumpRankState(Callback):
    """At the end of fit, each process saves its model's tensors and whether its norms are
    synchronised to ``folder/rank<R>.pt``."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from tresnet_ft.models.norm_act import BatchNormAct2d

        norms = [m for m in pl_module.model.modules() if isinstance(m, BatchNormAct2d)]
        state = {
            "state_dict": {
                k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()
            },
            "synchronised": [bool(m.synchronised) for m in norms],
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
        }
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        torch.save(state, Path(self.folder) / f"rank{trainer.global_rank}.pt")
