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

from ..models import create_model
from ..models.weights import read_checkpoint
from ..errors import InvalidValueError

METADATA_KEY = "tresnet_ft"
FORMAT_VERSION = 1
STATE_PREFIX = "model."


@dataclass
class ClassifierInfo:
    """What a trained classifier is: architecture, labels, and how to feed it.

    Attributes:
        arch, head, head_args, norm: passed to :func:`tresnet_ft.create_model`.
        classes: class names in output order (``K`` of them).
        task: ``"single_label"`` or ``"multi_label"``.
        image_size: evaluation side ``S``.
        eval_crop: ``"squish"`` (resize to ``S x S``) or ``"center_crop"``.
        eval_crop_fraction: centre-crop fraction (``center_crop`` only).
        mean, std: input normalisation in [0, 1] units (TResNet: 0 and 1).
        thresholds: multi-label decision thresholds (:meth:`Thresholds.to_dict`), or None.
    """

    arch: str
    classes: list[str]
    task: str
    image_size: int
    head: str = "linear"
    head_args: dict[str, Any] = field(default_factory=dict)
    norm: str = "inplace_abn"
    eval_crop: str = "squish"
    eval_crop_fraction: float = 0.875
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    thresholds: Optional[dict[str, Any]] = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only, so ``torch.load(weights_only=True)`` reads them back."""
        return {"format_version": FORMAT_VERSION, "arch": self.arch, "classes": list(self.classes),
                "task": self.task, "image_size": int(self.image_size), "head": self.head,
                "head_args": dict(self.head_args), "norm": self.norm, "eval_crop": self.eval_crop,
                "eval_crop_fraction": float(self.eval_crop_fraction), "mean": [float(v) for v in self.mean],
                "std": [float(v) for v in self.std], "thresholds": self.thresholds}

    @classmethod
    def from_dict(cls, meta: dict[str, Any]) -> "ClassifierInfo":
        if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise InvalidValueError(f"This checkpoint was written by a newer tresnet-ft (format {meta['format_version']}, "
                             f"this version reads {FORMAT_VERSION}). Fix: upgrade tresnet-ft.")
        values = {k: v for k, v in meta.items() if k != "format_version"}
        known = {f.name for f in fields(cls)}
        if set(values) - known or {"arch", "classes", "task", "image_size"} - set(values):
            raise InvalidValueError(f"Unexpected tresnet-ft checkpoint metadata: unknown keys {sorted(set(values) - known)}, "
                             f"missing {sorted({'arch', 'classes', 'task', 'image_size'} - set(values))}.")
        values["mean"], values["std"] = tuple(values["mean"]), tuple(values["std"])
        return cls(**values)

    def eval_transform(self, output: str = "float"):
        """The deterministic evaluation transform: RGB ``uint8 [H, W, 3]`` → ``[3, S, S]``.

        ``output="float"``: normalised ``float32``; ``"uint8"``: the same resize without scaling
        (convert batches on the device with ``images_to_float(x, info.mean, info.std)``).
        """
        from ..data.transforms import TransformConfig, build_transforms

        config = TransformConfig(image_size=self.image_size, eval_crop=self.eval_crop,  # type: ignore[arg-type]
                                 eval_crop_fraction=self.eval_crop_fraction, mean=self.mean, std=self.std)
        return build_transforms(config, train=False, output=output)  # type: ignore[arg-type]

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

