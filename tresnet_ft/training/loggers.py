"""Experiment loggers for ``tresnet-ft fit``: CSV and TensorBoard by default, W&B on request.

Every logger of a run writes into one folder, ``<default_root_dir>/<recipe>/version_<N>``, next
to the checkpoints and plots: ``--trainer.default_root_dir`` decides where runs go, as in
Lightning, and is ``runs`` unless set (:func:`runs_root`). A resumed run (``--ckpt_path last``)
writes into the folder of the run it continues; its CSV file then reads as if the run had never
stopped (:class:`ResumableCSVLogger`).
"""
from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import InvalidValueError
from .lightning_private import CSVLoggerWithHooks, ExperimentWriterWithHooks
from .runs import RunFolder

log = logging.getLogger(__name__)

DEFAULT_RUNS_DIR = "runs"  # the recipes' trainer.default_root_dir (recipes/_base.yaml)
# Where runs go when default_root_dir is left at the default; $TRESNET_FT_RUNS moves them all.
RUNS_DIR = Path(os.environ.get("TRESNET_FT_RUNS", DEFAULT_RUNS_DIR))
KNOWN_LOGGERS = ("csv", "tensorboard", "wandb")
DEFAULT_LOGGERS = "csv,tensorboard"


def runs_root(default_root_dir: str | Path | None) -> Path:
    """The folder that holds the run folders of a run configured with ``trainer.default_root_dir``.

    That folder itself, as in Lightning; unset (None) or the recipes' default ``runs``: :data:`RUNS_DIR`
    (``$TRESNET_FT_RUNS`` when set, else ``./runs``), read at each call.

    Example:
        ``runs_root("/data/exp")`` -> ``Path("/data/exp")``; ``runs_root("runs")`` -> ``Path("runs")``
        (or ``$TRESNET_FT_RUNS``).
    """
    # The recipes state "runs" only so that --print_config and the saved config show where runs go;
    # treating it as "the default" keeps $TRESNET_FT_RUNS able to move every recipe's runs.
    if default_root_dir is None or Path(str(default_root_dir)) == Path(DEFAULT_RUNS_DIR):
        return RUNS_DIR
    return Path(str(default_root_dir))


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


def logger_names(option: str | None) -> list[str]:
    """The names in ``--logger a,b`` (None: the default ``csv,tensorboard``); an unknown one raises."""
    names = [name.strip() for name in (option or DEFAULT_LOGGERS).split(",") if name.strip()]
    _check_known(names)
    return names


def _check_known(names: list[str]) -> None:
    unknown = sorted(set(names) - set(KNOWN_LOGGERS))
    if unknown:
        raise InvalidValueError(f"Unknown logger(s) {unknown}: expected some of {list(KNOWN_LOGGERS)}, "
                         "e.g. --logger csv,tensorboard,wandb.")


def logger_config(names: list[str], run: RunFolder) -> str:
    """The ``--trainer.logger`` value (a JSON list of class_path entries) for ``names``, every
    logger writing into ``run``: a new run's claimed folder or a resumed run's own
    (:func:`tresnet_ft.training.runs.new_run_folder`, :func:`~tresnet_ft.training.runs.run_of_checkpoint`)."""
    _check_known(names)
    runs_dir, run_name, version = run.save_dir, run.name, run.version
    common = {"save_dir": str(runs_dir), "name": run_name, "version": version}
    entries = []
    # CSV first: checkpoints go to the first logger's folder.
    if "csv" in names:
        entries.append({"class_path": f"{__name__}.ResumableCSVLogger", "init_args": common})
    if "tensorboard" in names:
        entries.append(_entry("TensorBoardLogger", **common, default_hp_metric=False))
    if "wandb" in names:
        online = wandb_can_sync()
        if not online:
            log.info("W&B: no login or offline mode; logging offline (upload later with `wandb sync`).")
        entries.append(_entry("WandbLogger", project="tresnet-ft", name=f"{run_name}-v{version}",
                              save_dir=str(run.path),
                              offline=not online, log_model=online))
    return json.dumps(entries)


class _ContinuingWriter(ExperimentWriterWithHooks):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued, not deleted.

    At the first save, rows of the earlier attempt from the first step now being logged onward
    are dropped: those steps ran after the checkpoint the run resumed from and are run again.
    """

    def prepare_log_dir(self) -> None:  # called by __init__; the base deletes metrics.csv
        self._continues = self.filesystem.isfile(self.metrics_file_path)

    def save(self) -> None:
        if self._continues and self.metrics:
            self._continues = False
            self._drop_rows_from(min(row["step"] for row in self.metrics))
        super().save()

    def _drop_rows_from(self, first_step: int) -> None:
        with self.filesystem.open(self.metrics_file_path, "r", newline="") as handle:
            reader = csv.DictReader(handle)
            keys, rows = list(reader.fieldnames or []), list(reader)
        kept = [row for row in rows if _step(row) < first_step]
        self.metrics_keys = sorted(set(keys) | set(self.metrics_keys))
        with self.filesystem.open(self.metrics_file_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(kept)
        if len(kept) < len(rows):
            log.info("Resumed run: dropped %d row(s) of %s logged after the checkpoint (steps >= %d).",
                     len(rows) - len(kept), self.metrics_file_path, first_step)


def _step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or "-inf")
    except ValueError:
        return float("-inf")


class ResumableCSVLogger(CSVLoggerWithHooks):
    """Lightning's :class:`~lightning.pytorch.loggers.CSVLogger` for runs that may be resumed.

    * Rows are flushed to ``metrics.csv`` whenever a checkpoint is written, so the file holds
      everything up to the checkpoint a crashed run resumes from.
    * Resuming into the same folder continues ``metrics.csv`` (Lightning's logger deletes it),
      dropping only the rows of steps that are run again.
    """

    def make_writer(self, log_dir: str) -> _ContinuingWriter:
        return _ContinuingWriter(log_dir=log_dir)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self.save()
