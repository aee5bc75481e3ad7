"""A classifier in timm's hub layout: what ``tresnet_ft.json`` holds, and how timm's
``pretrained_cfg`` maps to our :class:`~tresnet_ft.data.preprocessing.EvalPreprocessing`.

``config.json`` and ``model.safetensors`` are timm's (read by ``tresnet_ft/models/hub_folder.py``);
``tresnet_ft.json`` is ours and timm ignores it: the :class:`ClassifierInfo` (task, classes,
preprocessing, tuned thresholds), plus the training settings and validation metrics for the
record. A plain timm folder without it loads too: single-label, ``label_names`` as the classes
and the preprocessing from ``pretrained_cfg``.

The preprocessing mapping has one owner, here, both ways (timm's ``transforms_imagenet_eval``):

* ``squish`` (resize to ``S x S``) ↔ ``crop_mode="squash"`` with ``crop_pct=1.0``;
* ``center_crop`` (short side to ``round(S / fraction)``, centre crop ``S``) ↔ ``crop_mode="center"``
  with a ``crop_pct`` for which timm's ``floor(S / crop_pct)`` is that same side.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .checkpoint import ClassifierInfo, LoadedClassifier, build_classifier
from ..data.preprocessing import EvalPreprocessing, short_repr
from ..errors import InvalidValueError
from ..models.hub_folder import (METADATA_FILE, HubConfig, read_hub_config, read_hub_weights, read_json_file,
                                 resolve_hub_folder)
from ..version import __version__

METADATA_FORMAT_VERSION = 1
LIBRARY = "tresnet-ft"
# timm's PretrainedCfg defaults (timm/models/_pretrained.py), for a config that leaves a field out.
TIMM_DEFAULTS = {"input_size": [3, 224, 224], "crop_pct": 0.875, "crop_mode": "center",
                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
# Our resize is bilinear when enlarging (area when shrinking, see the model card): timm's "bilinear".
INTERPOLATION = "bilinear"


def pretrained_cfg_for(preprocessing: EvalPreprocessing) -> dict[str, Any]:
    """timm's data fields for ``preprocessing``: ``input_size``, ``interpolation``, ``crop_pct``,
    ``crop_mode``, ``mean``, ``std``, so that timm's eval transform has our geometry."""
    size = preprocessing.image_size
    if preprocessing.eval_crop == "squish":
        crop_mode, crop_pct = "squash", 1.0
    else:
        side = preprocessing.resize_side
        # timm resizes the short side to floor(S / crop_pct); ours is round(S / fraction).
        candidates = (preprocessing.eval_crop_fraction, size / side, size / (side + 0.5))
        crop_pct = next(c for c in candidates if math.floor(size / c) == side)
        crop_mode = "center"
    return {"input_size": [3, size, size], "interpolation": INTERPOLATION, "crop_pct": float(crop_pct),
            "crop_mode": crop_mode, "mean": list(preprocessing.mean), "std": list(preprocessing.std)}


def preprocessing_from_pretrained_cfg(cfg: Mapping[str, Any], where: Any) -> EvalPreprocessing:
    """Our :class:`EvalPreprocessing` for timm's ``pretrained_cfg`` (missing fields: timm's defaults).

    Raises:
        InvalidValueError: a non-square or non-RGB ``input_size``, or a resize we do not have
            (``crop_mode="border"``, or ``"squash"`` with ``crop_pct < 1``).
    """
    values = {**TIMM_DEFAULTS, **{k: v for k, v in cfg.items() if k in TIMM_DEFAULTS and v is not None}}
    input_size, crop_pct, crop_mode = values["input_size"], values["crop_pct"], values["crop_mode"]
    if not (isinstance(input_size, list) and len(input_size) == 3 and input_size[0] == 3
            and input_size[1] == input_size[2] and isinstance(input_size[1], int) and input_size[1] > 0):
        raise InvalidValueError(f"Unexpected {where}: expected pretrained_cfg.input_size to be [3, S, S], but got "
                                f"{short_repr(input_size)}.")
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
        raise InvalidValueError(f"Unexpected {where}: expected pretrained_cfg.crop_pct in (0, 1], but got "
                                f"{short_repr(crop_pct)}.")
    size = input_size[1]
    if crop_mode == "squash" and crop_pct == 1:
        crop, fraction = "squish", 0.875
    elif crop_mode == "center":
        crop, fraction = "center_crop", min(1.0, size / max(1, math.floor(size / crop_pct)))
    else:
        raise InvalidValueError(f"Unexpected {where}: crop_mode {short_repr(crop_mode)} with crop_pct {crop_pct} has "
                                "no tresnet-ft equivalent (squash with crop_pct 1, or center). Fix: set "
                                "pretrained_cfg to one of those, or load the model with timm.")
    return EvalPreprocessing(image_size=size, eval_crop=crop, eval_crop_fraction=fraction,  # type: ignore[arg-type]
                             mean=values["mean"], std=values["std"])


def metadata_document(info: ClassifierInfo, training: Optional[dict[str, Any]] = None,
                      validation: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The ``tresnet_ft.json`` content: plain JSON values (thresholds as lists)."""
    classifier = info.to_dict()
    if classifier["thresholds"] is not None:
        thresholds = dict(classifier["thresholds"])
        thresholds["per_class"] = [float(v) for v in torch.as_tensor(thresholds["per_class"]).tolist()]
        classifier["thresholds"] = {k: (float(v) if k != "per_class" else v) for k, v in thresholds.items()}
    return {"library": LIBRARY, "format_version": METADATA_FORMAT_VERSION, "tresnet_ft_version": __version__,
            "classifier": classifier, "training": training or {}, "validation_metrics": validation or {}}


def is_tresnet_ft_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a ``tresnet_ft.json`` of ours (so an export may replace it)."""
    try:
        document = read_json_file(folder / METADATA_FILE)
    except (InvalidValueError, FileNotFoundError, OSError):
        return False
    return document.get("library") == LIBRARY


def hub_classifier_info(folder: Path, config: HubConfig) -> ClassifierInfo:
    """The classifier ``folder`` holds: from ``tresnet_ft.json``, else from timm's ``config.json``."""
    if not (folder / METADATA_FILE).is_file():
        classes = config.label_names or [str(index) for index in range(config.num_classes)]
        return ClassifierInfo(arch=config.architecture, classes=classes, task="single_label",
                              preprocessing=preprocessing_from_pretrained_cfg(config.pretrained_cfg, folder),
                              head=config.head, head_args=config.head_args)
    document = read_json_file(folder / METADATA_FILE)
    version = document.get("format_version")
    if document.get("library") != LIBRARY or not isinstance(version, int) or version > METADATA_FORMAT_VERSION:
        raise InvalidValueError(f"Unexpected {folder / METADATA_FILE}: expected library {LIBRARY!r} with "
                                f"format_version up to {METADATA_FORMAT_VERSION}, but got "
                                f"{short_repr(document.get('library'))} {short_repr(version)}. Fix: upgrade tresnet-ft.")
    info = ClassifierInfo.from_dict(document.get("classifier"))
    agree = (info.arch == config.architecture and info.num_classes == config.num_classes
             and info.head == config.head and dict(info.head_args) == config.head_args
             and config.label_names in (None, info.classes))
    if not agree:
        raise InvalidValueError(
            f"its config.json ({config.architecture}, {config.num_classes} classes, {config.head} head) and "
            f"{METADATA_FILE} ({info.arch}, {info.num_classes} classes, {info.head} head) describe different models. "
            "Fix: export the folder again with `tresnet-ft export CKPT --format hf`.")
    return info


def load_hub_classifier(source: Union[str, Path], device: Union[str, torch.device] = "cpu") -> LoadedClassifier:
    """Load a classifier from ``hf-hub:ORG/NAME``, ``local-dir:DIR`` or ``DIR`` (timm's hub layout).

    Returns the unfused model in eval mode on ``device`` (``[B, 3, S, S]`` → ``[B, K]``) with its
    :class:`ClassifierInfo` (thresholds included when the folder has our ``tresnet_ft.json``).
    """
    folder = resolve_hub_folder(source)
    config = read_hub_config(folder)
    try:
        info = hub_classifier_info(folder, config)
        model = build_classifier(info, read_hub_weights(folder))
    except InvalidValueError as err:
        raise InvalidValueError(f"Cannot use {source}: {err}") from None
    return LoadedClassifier(model.to(device).eval(), info)
