"""Export a checkpoint as a folder in timm's Hugging Face hub layout.

The folder holds what ``timm.create_model("hf-hub:ORG/NAME", pretrained=True)`` (or
``"local-dir:DIR"``) reads, written as timm's ``save_for_hf`` writes it
(``timm/models/_hub.py: save_config_for_hf``), plus two files of ours:

* ``config.json``: ``architecture``, ``num_classes``, ``num_features``, ``global_pool``,
  ``label_names``, ``model_args`` (only when needed: the ML-Decoder head, a linear head's
  ``drop_rate``) and ``pretrained_cfg`` (timm's ``PretrainedCfg`` fields, nulls and sources left
  out as ``filter_pretrained_cfg(remove_source=True, remove_null=True)`` does);
* ``model.safetensors``: the unfused network's state dict, under timm's keys;
* ``tresnet_ft.json``: task, classes, preprocessing, tuned thresholds, training settings and
  validation metrics (``tresnet_ft/classifier/hub_folder.py``); timm ignores it;
* ``README.md``: the model card (``inference/model_card.py``), and ``plots/*.png`` from the run.

The folder is written whole or not at all (:func:`tresnet_ft.outputs.atomic_folder`).
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from ..classifier.checkpoint import ClassifierInfo, LoadedClassifier, classifier_from_checkpoint, load_classifier
from ..classifier.hub_folder import is_tresnet_ft_folder, metadata_document, pretrained_cfg_for
from ..fetch.packages import import_package
from ..models.hub_folder import CONFIG_FILE, METADATA_FILE, WEIGHTS_FILE, is_hub_source
from ..models.weights import read_checkpoint
from ..outputs import atomic_folder
from .loading import open_checkpoint
from .model_card import model_card
from .run_record import RunRecord, read_run_record

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
PLOTS_FOLDER = "plots"
GLOBAL_POOL = "avg"  # informational in timm ("do not impact model build"); our heads average-pool
STEM_CONV = "body.conv1.conv"  # timm's first_conv for TResNet (tresnet.py default_cfgs)
TRESNET_PAPER = ("TResNet: High Performance GPU-Dedicated Architecture", "arXiv:2003.13630")


@dataclass
class HubExportReport:
    """What :func:`export_hub_folder` wrote.

    Attributes:
        folder: the folder in timm's hub layout.
        files: the names written in it (``plots/...`` included).
        architecture, head, task: the model.
        num_classes: ``K``.
        timm_loadable: whether timm alone rebuilds it (False with the ML-Decoder head).
        seconds: wall time of the export.

    ``str(report)`` says the same in sentences, with the lines that load the folder.
    """

    folder: Path
    files: list[str]
    architecture: str
    head: str
    task: str
    num_classes: int
    timm_loadable: bool
    seconds: float

    def __str__(self) -> str:
        head = {"ml_decoder": "an ML-Decoder", "linear": "a linear"}.get(self.head, f"a {self.head}")
        what = (f"{self.architecture} with {head} head for {self.num_classes} "
                f"{'tags (multi-label)' if self.task == 'multi_label' else 'classes (single-label)'}")
        wrote = (f"Wrote {self.folder} in timm's hub layout ({', '.join(self.files)}) in {self.seconds:.1f} s: "
                 f"{what}.")
        ours = f"tresnet_ft.load_classifier({str(self.folder)!r}) or `tresnet-ft predict {self.folder} IMAGES`"
        if not self.timm_loadable:
            return f"{wrote} Load it with {ours}; timm alone cannot rebuild its ML-Decoder head."
        return f"{wrote} Load it with timm.create_model('local-dir:{self.folder}', pretrained=True), {ours}."


def export_hub_folder(checkpoint: str | Path, output: str | Path,
                      repo_id: Optional[str] = None) -> HubExportReport:
    """Write ``checkpoint`` (a ``.ckpt`` from ``tresnet-ft fit``) as a folder in timm's hub layout.

    Args:
        checkpoint: the checkpoint; its run folder (``<run>/checkpoints/*.ckpt``), when there is one,
            gives the card its settings, validation metrics and plots.
        output: the folder to write. An existing one is replaced only when it is empty or an earlier
            export of ours.
        repo_id: ``ORG/NAME`` for the card's loading examples (default: a placeholder).

    Raises:
        InvalidValueError: ``output`` is a file, a device, a link, holds the checkpoint, or is a
            non-empty folder that is not an earlier export; not a tresnet-ft checkpoint.
        FileNotFoundError: no such checkpoint.
        DiskFullError: the disk filled up (nothing is left under ``output``).
    """
    started, output = time.perf_counter(), Path(output)
    inputs = [] if str(checkpoint).startswith("hf-hub:") else [checkpoint]
    fix = f"choose a new folder, e.g. -o {output.with_name(output.name + '-hf')}"
    with atomic_folder(output, inputs, is_ours=is_tresnet_ft_folder, fix=fix) as partial:
        loaded, record = _load(checkpoint)  # inside: a wrong output fails before the model loads
        files = _write_folder(partial, loaded, record, repo_id, Path(str(checkpoint)).name)
    info = loaded.info
    report = HubExportReport(output, files, info.arch, info.head, info.task, info.num_classes,
                             info.head != "ml_decoder", time.perf_counter() - started)
    log.info("%s", report)
    return report


def _load(checkpoint: str | Path) -> tuple[LoadedClassifier, RunRecord]:
    """The unfused classifier and what its run recorded (read once from the file)."""
    if is_hub_source(checkpoint):  # an earlier export: re-export it (a new card, another repo id)
        return load_classifier(checkpoint), RunRecord()
    path = Path(checkpoint)
    if not path.is_file():
        open_checkpoint(path)  # raises the missing-file error in inference terms
    raw = read_checkpoint(path)
    return classifier_from_checkpoint(raw, path), read_run_record(path, raw)


def _write_folder(folder: Path, loaded: LoadedClassifier, record: RunRecord, repo_id: Optional[str],
                  source_name: str) -> list[str]:
    info = loaded.info
    pretrained_cfg = timm_pretrained_cfg(info)
    _write_json(folder / CONFIG_FILE, hub_config(loaded.model, info, pretrained_cfg))
    safetensors_torch = import_package("safetensors.torch", "Writing model.safetensors", "safetensors")
    safetensors_torch.save_file(hub_state_dict(loaded.model), str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    training = {"checkpoint": source_name, **record.training_settings()}
    _write_json(folder / METADATA_FILE, metadata_document(info, training, record.metrics))
    plots = []
    for path in record.plots:
        (folder / PLOTS_FOLDER).mkdir(exist_ok=True)
        shutil.copyfile(path, folder / PLOTS_FOLDER / path.name)
        plots.append(f"{PLOTS_FOLDER}/{path.name}")
    (folder / CARD_FILE).write_text(model_card(info, record, pretrained_cfg, plots, repo_id), encoding="utf-8")
    return [CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE, CARD_FILE, *plots]


def _write_json(path: Path, value: Mapping[str, Any]) -> None:
    # allow_nan=False: timm reads it with json.loads, but other readers of the hub refuse NaN.
    path.write_text(json.dumps(value, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def model_args(info: ClassifierInfo) -> dict[str, Any]:
    """timm's ``model_args`` (keyword arguments of its model constructor): empty for a plain linear
    head, ``drop_rate`` for one with dropout, our ``head``/``head_args`` for ML-Decoder (which
    timm's TResNet refuses, instead of building a model without that head)."""
    if info.head == "linear":
        return {"drop_rate": float(info.head_args["drop_rate"])} if info.head_args.get("drop_rate") else {}
    return {"head": info.head, "head_args": dict(info.head_args)}


def timm_pretrained_cfg(info: ClassifierInfo) -> dict[str, Any]:
    """``pretrained_cfg`` as timm writes it: ``PretrainedCfg`` fields in their order, without the
    source fields and the nulls (``classifier`` kept even when null, as timm keeps it)."""
    size = info.image_size
    data = pretrained_cfg_for(info.preprocessing)
    head = "an ML-Decoder head" if info.head == "ml_decoder" else "a linear head"
    task = info.task.replace("_", "-")
    return {"custom_load": False, "input_size": data["input_size"], "fixed_input_size": False,
            "interpolation": data["interpolation"], "crop_pct": data["crop_pct"], "crop_mode": data["crop_mode"],
            "mean": data["mean"], "std": data["std"], "num_classes": info.num_classes,
            "pool_size": [-(-size // 32), -(-size // 32)], "first_conv": STEM_CONV,
            # timm drops "<classifier>.weight/.bias" when the class count changes: ML-Decoder has neither.
            "classifier": "head.fc" if info.head == "linear" else None,
            "description": f"{info.arch} with {head}, {task}, fine-tuned with tresnet-ft",
            "paper_name": TRESNET_PAPER[0], "paper_ids": TRESNET_PAPER[1]}


def hub_config(model: nn.Module, info: ClassifierInfo, pretrained_cfg: dict[str, Any]) -> dict[str, Any]:
    """``config.json``: the keys and order of timm's ``save_config_for_hf``."""
    config: dict[str, Any] = {"architecture": info.arch, "num_classes": info.num_classes,
                              "num_features": int(getattr(model, "num_features")), "global_pool": GLOBAL_POOL,
                              "label_names": list(info.classes)}
    args = model_args(info)
    if args:  # timm writes model_args only when there are some
        config["model_args"] = args
    config["pretrained_cfg"] = pretrained_cfg
    return config


def hub_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as safetensors stores it: contiguous CPU tensors (ours are channels_last)."""
    return {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
