"""Experiment loggers for ``tresnet-ft fit``: CSV and TensorBoard by default, W&B on request.

Every logger of a run writes into one folder, ``runs/<recipe>/version_<N>``, next to the
checkpoints and plots.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

RUNS_DIR = Path(os.environ.get("TRESNET_FT_RUNS", "runs"))
KNOWN_LOGGERS = ("csv", "tensorboard", "wandb")


def next_version(run_name: str, runs_dir: Path = RUNS_DIR) -> int:
    """The first ``version_N`` not yet used under ``runs_dir/run_name``."""
    existing = [int(p.name.split("_", 1)[1]) for p in (runs_dir / run_name).glob("version_*")
                if p.name.split("_", 1)[1].isdigit()]
    return max(existing, default=-1) + 1


def wandb_can_sync() -> bool:
    """True when W&B has credentials and is not forced offline; otherwise we log offline."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return False
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def _entry(class_name: str, **init_args: object) -> dict:
    return {"class_path": f"lightning.pytorch.loggers.{class_name}", "init_args": init_args}


def logger_config(names: list[str], run_name: str, runs_dir: Path = RUNS_DIR) -> str:
    """The ``--trainer.logger`` value (a JSON list of class_path entries) for ``names``."""
    unknown = sorted(set(names) - set(KNOWN_LOGGERS))
    if unknown:
        raise ValueError(f"Unknown logger(s) {unknown}: expected some of {list(KNOWN_LOGGERS)}, "
                         "e.g. --logger csv,tensorboard,wandb.")
    version = next_version(run_name, runs_dir)
    common = {"save_dir": str(runs_dir), "name": run_name, "version": version}
    entries = []
    # CSV first: it warns when its folder already holds files, TensorBoard does not.
    if "csv" in names:
        entries.append(_entry("CSVLogger", **common))
    if "tensorboard" in names:
        entries.append(_entry("TensorBoardLogger", **common, default_hp_metric=False))
    if "wandb" in names:
        online = wandb_can_sync()
        if not online:
            log.info("W&B: no login or offline mode; logging offline (upload later with `wandb sync`).")
        entries.append(_entry("WandbLogger", project="tresnet-ft", name=f"{run_name}-v{version}",
                              save_dir=str(runs_dir / run_name / f"version_{version}"),
                              offline=not online, log_model=online))
    return json.dumps(entries)
