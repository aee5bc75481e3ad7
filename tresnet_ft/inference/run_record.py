"""What a checkpoint's run recorded, for a model card: settings, validation metrics, plots.

``tresnet-ft fit`` writes ``<runs>/<name>/version_<N>/`` with ``checkpoints/{best,last}.ckpt``,
``metrics.csv`` (the CSV logger), ``config.yaml`` (LightningCLI's settings), ``hparams.yaml`` and
``plots/*.png`` (``training/plot_callback.py``). The checkpoint itself holds the module's and the
DataModule's hyperparameters and its epoch. Only plain, checked values are taken, and nothing
that may reveal the trainer's machine (the data folder, a local weights path) is kept: the card is
meant to be published.
"""
from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ..classifier.checkpoint import trusted_hyperparameters
from ..data.preprocessing import is_finite_number
from ..models.weights import PRETRAINED

log = logging.getLogger(__name__)

# The DataModule settings worth publishing (never ``root``: a path on the trainer's machine).
DATA_SETTINGS = ("dataset", "image_size", "batch_size", "train_crop", "crop_scale", "hflip", "randaugment_ops",
                 "randaugment_magnitude", "cutout", "cutout_size", "eval_crop", "mixup_alpha", "cutmix_alpha",
                 "mix_prob", "val_fraction", "seed")
TRAINER_SETTINGS = ("max_epochs", "max_steps", "precision", "accumulate_grad_batches", "devices", "num_nodes",
                    "gradient_clip_val")
# Shown elsewhere in the card (classes, preprocessing) or meaningless there.
_MODEL_LEFT_OUT = ("classes", "preprocessing", "compile", "plots", "checkpoint_every_n_steps")
MAX_RECORD_BYTES = 64 << 20  # metrics.csv and config.yaml; a longer one is not ours
MAX_PLOT_BYTES = 20 << 20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class RunRecord:
    """The parts of a run a model card shows; empty when the checkpoint is not in a run folder."""

    run_name: Optional[str] = None  # the recipe or --trainer logger name (<runs>/<name>/version_<N>)
    epoch: Optional[int] = None  # of the checkpoint
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # validation metrics at ``epoch``
    plots: list[Path] = field(default_factory=list)

    def training_settings(self) -> dict[str, Any]:
        """``{"run", "epoch", "model", "data", "trainer"}`` as plain JSON values."""
        return {"run": self.run_name, "epoch": self.epoch, "model": self.model, "data": self.data,
                "trainer": self.trainer}


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return len(value) <= 16 and all(_plain(item) for item in value)
    return value is None or isinstance(value, bool) or is_finite_number(value) or (
        isinstance(value, str) and len(value) <= 100)


def _pick(values: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(values, Mapping):
        return {}
    return {key: (list(values[key]) if isinstance(values[key], tuple) else values[key])
            for key in keys if key in values and _plain(values[key])}


def _model_settings(saved: Any) -> dict[str, Any]:
    kept, _ = trusted_hyperparameters(saved)
    settings = {k: v for k, v in kept.items() if k not in _MODEL_LEFT_OUT}
    pretrained = saved.get("pretrained") if isinstance(saved, Mapping) else None
    if isinstance(pretrained, str):  # a published tag is worth naming; a path or URL is private
        arch = str(saved.get("arch", "")).split(".")[0]
        name = pretrained if pretrained in PRETRAINED else f"{arch}.{pretrained}"
        settings["pretrained"] = name if name in PRETRAINED else "a weights file (not recorded)"
    elif pretrained is None or pretrained is False:
        settings["pretrained"] = None
    return settings


def read_run_record(checkpoint_path: Path, checkpoint: Mapping[str, Any]) -> RunRecord:
    """What the run of ``checkpoint`` (read from ``checkpoint_path``) recorded."""
    epoch = checkpoint.get("epoch")
    record = RunRecord(epoch=epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
                       model=_model_settings(checkpoint.get("hyper_parameters")),
                       data=_pick(checkpoint.get("datamodule_hyper_parameters"), DATA_SETTINGS))
    folder = checkpoint_path.parent.parent if checkpoint_path.parent.name == "checkpoints" else None
    if folder is None or not (folder / "metrics.csv").is_file():
        return record
    record.run_name = folder.parent.name
    record.trainer = _pick((_read_yaml(folder / "config.yaml") or {}).get("trainer"), TRAINER_SETTINGS)
    record.metrics = _validation_metrics(folder / "metrics.csv", record.epoch)
    record.plots = sorted(path for path in (folder / "plots").glob("*.png")
                          if not path.name.startswith(".") and _is_png(path))
    return record


def _read_text(path: Path) -> Optional[str]:
    try:
        if not path.is_file() or path.stat().st_size > MAX_RECORD_BYTES:
            return None
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _read_yaml(path: Path) -> Optional[dict[str, Any]]:
    text = _read_text(path)
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        log.warning("Could not read %s; the model card leaves the trainer settings out.", path)
        return None
    return value if isinstance(value, dict) else None


def _validation_metrics(path: Path, epoch: Optional[int]) -> dict[str, float]:
    """The ``val/*`` values of the last row of ``epoch`` that has them (the checkpoint's validation)."""
    text = _read_text(path)
    if not text:
        return {}
    metrics: dict[str, float] = {}
    try:
        for row in csv.DictReader(io.StringIO(text)):
            if epoch is not None and row.get("epoch") != str(epoch):
                continue
            values = {k: float(v) for k, v in row.items() if isinstance(k, str) and k.startswith("val/") and v}
            metrics = values or metrics
    except (csv.Error, ValueError):
        log.warning("Could not read %s; the model card leaves the validation metrics out.", path)
        return {}
    return {k: v for k, v in metrics.items() if is_finite_number(v)}


def _is_png(path: Path) -> bool:
    try:
        if not path.is_file() or path.stat().st_size > MAX_PLOT_BYTES:
            return False
        with path.open("rb") as handle:
            return handle.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
    except OSError:
        return False
