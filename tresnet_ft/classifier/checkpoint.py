"""Self-contained classifier checkpoints: everything needed to predict or export, and nothing
that needs unpickling beyond tensors and plain Python values.

A tresnet-ft checkpoint is a Lightning checkpoint with one extra entry, ``"tresnet_ft"``, holding
the metadata below (written by :class:`tresnet_ft.TResNetClassifier`). The weights are
``state_dict`` under the ``model.`` prefix (with EMA on, the averaged weights). A run's
``best.ckpt`` holds only these and the hyperparameters; ``last.ckpt`` adds the training state
that resuming needs (optimizer, schedule, the raw weights next to the average).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from ..data.preprocessing import EvalPreprocessing
from ..data.transforms import ImageTransform, eval_transform
from ..models import create_model
from ..models.weights import read_checkpoint
from ..errors import InvalidValueError

METADATA_KEY = "tresnet_ft"
# 2: the evaluation settings moved into one "preprocessing" entry; version 1 kept them flat.
FORMAT_VERSION = 2
STATE_PREFIX = "model."
LEGACY_PREPROCESSING_KEYS = ("image_size", "eval_crop", "eval_crop_fraction", "mean", "std")
REQUIRED_KEYS = ("arch", "classes", "task", "preprocessing")


@dataclass
class ClassifierInfo:
    """What a trained classifier is: architecture, labels, and how to feed it.

    Attributes:
        arch, head, head_args, norm: passed to :func:`tresnet_ft.create_model`.
        classes: class names in output order (``K`` of them).
        task: ``"single_label"`` or ``"multi_label"``.
        preprocessing: how images are fed (side ``S``, resize rule, mean/std); see
            :class:`~tresnet_ft.data.preprocessing.EvalPreprocessing`.
        thresholds: multi-label decision thresholds (:meth:`Thresholds.to_dict`), or None.
    """

    arch: str
    classes: list[str]
    task: str
    preprocessing: EvalPreprocessing
    head: str = "linear"
    head_args: dict[str, Any] = field(default_factory=dict)
    norm: str = "inplace_abn"
    thresholds: Optional[dict[str, Any]] = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        """``S`` of the model's input ``[B, 3, S, S]`` (read from :attr:`preprocessing`)."""
        return self.preprocessing.image_size

    def to_dict(self) -> dict[str, Any]:
        """Plain values only, so ``torch.load(weights_only=True)`` reads them back."""
        return {"format_version": FORMAT_VERSION, "arch": self.arch, "classes": list(self.classes),
                "task": self.task, "preprocessing": self.preprocessing.to_dict(), "head": self.head,
                "head_args": dict(self.head_args), "norm": self.norm, "thresholds": self.thresholds}

    @classmethod
    def from_dict(cls, meta: dict[str, Any]) -> "ClassifierInfo":
        """Read :meth:`to_dict`'s output, or a version 1 entry with flat ``image_size``, ``eval_crop``,
        ``eval_crop_fraction``, ``mean`` and ``std`` keys."""
        if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise InvalidValueError(f"This checkpoint was written by a newer tresnet-ft (format {meta['format_version']}, "
                             f"this version reads {FORMAT_VERSION}). Fix: upgrade tresnet-ft.")
        values = {k: v for k, v in meta.items() if k != "format_version"}
        if "preprocessing" not in values and "image_size" in values:
            values["preprocessing"] = {k: values.pop(k) for k in LEGACY_PREPROCESSING_KEYS if k in values}
        known = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(values) - known), sorted(set(REQUIRED_KEYS) - set(values))
        if unknown or missing:
            raise InvalidValueError(f"Unexpected tresnet-ft checkpoint metadata: unknown keys {unknown}, "
                                    f"missing {missing}.")
        values["preprocessing"] = EvalPreprocessing.from_dict(values["preprocessing"])
        return cls(**values)

    def eval_transform(self, output: str = "float") -> ImageTransform:
        """The deterministic evaluation transform: RGB ``uint8 [H, W, 3]`` → ``[3, S, S]``.

        ``output="float"``: normalised ``float32``; ``"uint8"``: the same resize without scaling
        (convert batches on the device with ``info.preprocessing.to_float(x)``).
        """
        return eval_transform(self.preprocessing, output=output)  # type: ignore[arg-type]

    def decision_thresholds(self, override: Optional[float] = None) -> torch.Tensor:
        """``[K]`` multi-label thresholds: ``override`` for all, else the tuned per-class ones, else 0.5."""
        if override is not None:
            return torch.full((self.num_classes,), float(override))
        if self.thresholds is not None:
            return torch.as_tensor(self.thresholds["per_class"], dtype=torch.float32)
        return torch.full((self.num_classes,), 0.5)


@dataclass
class LoadedClassifier:
    """A classifier ready for inference: ``model`` in eval mode plus its :class:`ClassifierInfo`."""

    model: nn.Module
    info: ClassifierInfo


def load_classifier(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> LoadedClassifier:
    """Read a tresnet-ft checkpoint (safely) and rebuild the trained classifier.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file needs arbitrary unpickling.
        ValueError: not a tresnet-ft checkpoint (the message says what it looks like instead).
    """
    checkpoint = read_checkpoint(path)
    meta = checkpoint.get(METADATA_KEY)
    if not isinstance(meta, dict):
        raise InvalidValueError(f"{path} is not a tresnet-ft classifier checkpoint: it has no {METADATA_KEY!r} entry "
                         f"(top-level keys: {sorted(checkpoint)[:8]}). Fix: pass a checkpoint written by "
                         "`tresnet-ft fit` (e.g. runs/<recipe>/version_<N>/checkpoints/best.ckpt).")
    info = ClassifierInfo.from_dict(meta)
    model = create_model(info.arch, num_classes=info.num_classes, head=info.head, head_args=info.head_args,
                         norm=info.norm)
    state = {k[len(STATE_PREFIX):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(STATE_PREFIX)}
    model.load_state_dict(state)
    return LoadedClassifier(model.to(device).eval(), info)


def write_classifier(path: Union[str, Path], model: nn.Module, info: ClassifierInfo) -> Path:
    """Save ``model`` and ``info`` in the checkpoint layout above (without training state).

    Useful to share a model: the file is small and loads with :func:`load_classifier`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {STATE_PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, METADATA_KEY: info.to_dict()}, path)
    return path

