"""Self-contained classifier checkpoints: everything needed to predict or export, and nothing
that needs unpickling beyond tensors and plain Python values.

A tresnet-ft checkpoint is a Lightning checkpoint with one extra entry, ``"tresnet_ft"``, holding
the metadata below (written by :class:`tresnet_ft.TResNetClassifier`). The weights are
``state_dict`` under the ``model.`` prefix (with EMA on, the averaged weights). A run's
``best.ckpt`` holds only these and the hyperparameters; ``last.ckpt`` adds the training state
that resuming needs (optimizer, schedule, the raw weights next to the average).
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from .thresholds import Thresholds
from ..data.preprocessing import EvalPreprocessing, is_finite_number, short_repr
from ..data.transforms import ImageTransform, eval_transform
from ..heads import HEADS, create_head
from ..models import ARCHS, create_model
from ..models.norm_act import NORM_LAYERS
from ..models.hub_folder import is_hub_source
from ..models.weights import read_checkpoint
from ..errors import InvalidValueError

METADATA_KEY = "tresnet_ft"
# 2: the evaluation settings moved into one "preprocessing" entry; version 1 kept them flat.
FORMAT_VERSION = 2
STATE_PREFIX = "model."
LEGACY_PREPROCESSING_KEYS = ("image_size", "eval_crop", "eval_crop_fraction", "mean", "std")
REQUIRED_KEYS = ("arch", "classes", "task", "preprocessing")
TASKS = ("single_label", "multi_label")
# A registry name, a loss or an optimizer: never a path, a URL or a module (no "/", ":" or ".").
_PLAIN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


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
    def from_dict(cls, meta: Mapping[str, Any]) -> "ClassifierInfo":
        """Read :meth:`to_dict`'s output, or a version 1 entry with flat ``image_size``, ``eval_crop``,
        ``eval_crop_fraction``, ``mean`` and ``std`` keys.

        Every value is checked, since a checkpoint comes from wherever its user got it: a wrong one
        is an :class:`~tresnet_ft.errors.InvalidValueError` naming it, not a traceback later on.
        """
        values = _metadata_values(meta)
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(key) for key in set(values) - known)  # str: keys of mixed types do not sort
        missing = sorted(set(REQUIRED_KEYS) - set(values))
        if unknown or missing:
            raise InvalidValueError(f"Unexpected tresnet-ft checkpoint metadata: unknown keys {unknown}, "
                                    f"missing {missing}.")
        for key, (is_valid, expected) in _METADATA_CHECKS.items():
            if key in values and not is_valid(values[key]):
                raise InvalidValueError(f"Unexpected tresnet-ft checkpoint metadata: expected {key} to be {expected}, "
                                        f"but got {short_repr(values[key])}.")
        _check_head_args(values.get("head", "linear"), values.get("head_args", {}))
        values["thresholds"] = _checked_thresholds(values.get("thresholds"), len(values["classes"]))
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and _PLAIN_NAME.fullmatch(value) is not None


def _is_class_list(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(isinstance(name, str) for name in value)


def _one_of(choices: Any) -> tuple[Callable[[Any], bool], str]:
    return (lambda value: isinstance(value, str) and value in choices), f"one of {sorted(choices)}"


_METADATA_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "arch": _one_of(ARCHS), "task": _one_of(TASKS), "head": _one_of(HEADS), "norm": _one_of(NORM_LAYERS),
    "classes": (_is_class_list, "a non-empty list of class names"),
    "head_args": (lambda value: isinstance(value, dict), "a dict of head settings"),
    "preprocessing": (lambda value: isinstance(value, Mapping), "a dict of preprocessing settings"),
}


def _metadata_values(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata without its format version, in this version's layout (version 1: flat preprocessing)."""
    if not isinstance(meta, Mapping):
        raise InvalidValueError(f"Expected tresnet-ft checkpoint metadata to be a dict, but got {type(meta).__name__}.")
    version = meta.get("format_version", FORMAT_VERSION)
    if not _is_int(version) or version < 1:
        raise InvalidValueError(f"Unexpected tresnet-ft checkpoint metadata: expected format_version to be an integer "
                                f"from 1 to {FORMAT_VERSION}, but got {short_repr(version)}.")
    if version > FORMAT_VERSION:
        raise InvalidValueError(f"This checkpoint was written by a newer tresnet-ft (format {short_repr(version)}, "
                                f"this version reads {FORMAT_VERSION}). Fix: upgrade tresnet-ft.")
    values = {k: v for k, v in meta.items() if k != "format_version"}
    if "preprocessing" not in values and "image_size" in values:
        values["preprocessing"] = {k: values.pop(k) for k in LEGACY_PREPROCESSING_KEYS if k in values}
    return values


def _check_head_args(head: str, head_args: dict[str, Any]) -> None:
    """Each key must be a setting of the head's constructor, each value of its default's type."""
    settings = {name: parameter.default for name, parameter in inspect.signature(HEADS[head]).parameters.items()
                if name not in ("num_features", "num_classes")}
    for key, value in head_args.items():
        default = settings.get(key, inspect.Parameter.empty)
        fits = (_is_int(value) if _is_int(default) else is_finite_number(value) if is_finite_number(default)
                else isinstance(value, type(default)))
        if key not in settings or not fits:
            raise InvalidValueError(
                f"Unexpected tresnet-ft checkpoint metadata: expected head_args of the {head} head to be some of "
                f"{ {name: type(value).__name__ for name, value in settings.items()} }, but got "
                f"{short_repr(key)}: {short_repr(value)}.")


def _checked_thresholds(thresholds: Any, num_classes: int) -> Optional[dict[str, Any]]:
    """``thresholds`` as :meth:`Thresholds.to_dict` writes them (``per_class`` a float tensor ``[K]``), or None."""
    if thresholds is None:
        return None
    expected = {f.name for f in fields(Thresholds)}
    per_class = thresholds.get("per_class") if isinstance(thresholds, dict) else None
    if isinstance(per_class, list) and all(is_finite_number(value) for value in per_class):
        per_class = torch.tensor(per_class, dtype=torch.float32)
    valid = (isinstance(thresholds, dict) and set(thresholds) == expected
             and all(is_finite_number(thresholds[key]) for key in expected - {"per_class"})
             and isinstance(per_class, torch.Tensor) and per_class.is_floating_point()
             and tuple(per_class.shape) == (num_classes,) and bool(per_class.isfinite().all()))
    if not valid:
        raise InvalidValueError(f"Unexpected tresnet-ft checkpoint metadata: expected thresholds to be None or "
                                f"{sorted(expected)} with a per_class threshold for each of the {num_classes} "
                                f"classes, but got {short_repr(thresholds)}.")
    return {**thresholds, "per_class": per_class.float()}


@dataclass
class LoadedClassifier:
    """A classifier ready for inference: ``model`` in eval mode plus its :class:`ClassifierInfo`."""

    model: nn.Module
    info: ClassifierInfo


def load_classifier(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> LoadedClassifier:
    """Read a tresnet-ft checkpoint (safely) and rebuild the trained classifier.

    ``path`` may also be a folder in timm's hub layout: ``DIR``, ``local-dir:DIR`` or
    ``hf-hub:ORG/NAME`` (see :func:`tresnet_ft.classifier.hub_folder.load_hub_classifier`).

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file needs arbitrary unpickling.
        ValueError: not a tresnet-ft checkpoint (the message says what it looks like instead).
    """
    if is_hub_source(path):
        from .hub_folder import load_hub_classifier  # late: it builds on this module

        return load_hub_classifier(path, device)
    return classifier_from_checkpoint(read_checkpoint(path), path, device)


def classifier_from_checkpoint(checkpoint: Any, path: Any,
                               device: Union[str, torch.device] = "cpu") -> LoadedClassifier:
    """:func:`load_classifier` on a checkpoint already read (``read_checkpoint``); ``path`` names it."""
    meta = checkpoint.get(METADATA_KEY) if isinstance(checkpoint, Mapping) else None
    if not isinstance(meta, dict):
        keys = sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise InvalidValueError(f"{path} is not a tresnet-ft classifier checkpoint: it has no {METADATA_KEY!r} entry "
                                f"(top-level keys: {keys}). Fix: pass a checkpoint written by "
                                "`tresnet-ft fit` (e.g. runs/<recipe>/version_<N>/checkpoints/best.ckpt).")
    try:  # the metadata and the weights are checked before anything is built from them
        info = ClassifierInfo.from_dict(meta)
        model = build_classifier(info, _classifier_state(checkpoint.get("state_dict")))
    except InvalidValueError as err:
        raise InvalidValueError(f"Cannot use {path}: {err}") from None
    return LoadedClassifier(model.to(device).eval(), info)


def checked_metadata(checkpoint: Mapping[str, Any], path: Any = None) -> dict[str, Any]:
    """``checkpoint``'s tresnet-ft metadata as :meth:`ClassifierInfo.to_dict` writes it, each value
    checked (``{}`` when it has none): a crafted entry is one error naming ``path``."""
    meta = checkpoint.get(METADATA_KEY)
    if meta is None:
        return {}
    try:
        return ClassifierInfo.from_dict(meta).to_dict()
    except InvalidValueError as err:
        raise InvalidValueError(f"Cannot use {path or 'the checkpoint'}: {err}") from None


def _classifier_state(state_dict: Any) -> dict[str, torch.Tensor]:
    """The network's weights: the ``model.`` entries of ``state_dict``, without the prefix."""
    if not isinstance(state_dict, Mapping) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise InvalidValueError("expected its state_dict to be a dict of tensors, but got "
                                f"{short_repr(state_dict)}.")
    return {k[len(STATE_PREFIX):]: v for k, v in state_dict.items()
            if isinstance(k, str) and k.startswith(STATE_PREFIX)}


def build_classifier(info: ClassifierInfo, state: dict[str, torch.Tensor]) -> nn.Module:
    """The network ``info`` describes with ``state`` loaded, or one error naming what does not fit.

    The metadata sizes the head (class count, ``head_args``), so the head is first built on the
    meta device, which allocates nothing, and compared with the weights the file holds: a crafted
    entry cannot make this allocate more than the file's own tensors.
    """
    model = create_model(info.arch, num_classes=1, norm=info.norm)  # the body: its size is the architecture's
    try:
        with torch.device("meta"):
            head = create_head(info.head, model.num_features, info.num_classes, **info.head_args)
    except (TypeError, ValueError, ArithmeticError, RuntimeError) as err:  # sizes no head can have
        raise InvalidValueError(f"its head_args {short_repr(info.head_args)} do not make a {info.head} head "
                                f"({type(err).__name__}: {str(err)[:120]}).") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("head.")}
    expected.update({f"head.{k}": tuple(v.shape) for k, v in head.state_dict().items()})
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    reshaped = [f"{k} {got[k]} instead of {expected[k]}" for k in sorted(set(expected) & set(got))
                if got[k] != expected[k]]
    if missing or unexpected or reshaped:
        raise InvalidValueError(
            f"its weights do not fit the {info.arch} with a {info.head} head for {info.num_classes} classes that its "
            f"metadata describes: missing {missing[:4]} ({len(missing)} in all), unexpected {unexpected[:4]} "
            f"({len(unexpected)} in all), other shapes: {', '.join(reshaped[:4]) or 'none'} ({len(reshaped)} in all). "
            "Fix: pass the checkpoint as tresnet-ft wrote it.")
    model.reset_classifier(info.num_classes, info.head, **info.head_args)
    model.load_state_dict(state)
    return model


def write_classifier(path: Union[str, Path], model: nn.Module, info: ClassifierInfo) -> Path:
    """Save ``model`` and ``info`` in the checkpoint layout above (without training state).

    Useful to share a model: the file is small and loads with :func:`load_classifier`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {STATE_PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, METADATA_KEY: info.to_dict()}, path)
    return path


def _is_optional(is_valid: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or is_valid(value)


def _is_plain_head_args(value: Any) -> bool:
    return isinstance(value, dict) and all(_is_name(key) and (item is None or isinstance(item, bool)
                                                              or is_finite_number(item)) for key, item in value.items())


def _is_preprocessing(value: Any) -> bool:
    try:
        EvalPreprocessing.from_dict(value)
    except InvalidValueError:
        return False
    return True


# The hyperparameters a checkpoint may restore (LightningCLI merges them into the model's settings on
# --ckpt_path), each with the test its value must pass: what the network is and how it was trained,
# as plain numbers, flags and registry names. Nothing here can name a file, a URL or code to import.
RESTORABLE_HYPERPARAMETERS: dict[str, Callable[[Any], bool]] = {
    **dict.fromkeys(("head", "norm", "task", "loss", "optimizer", "scheduler"), _is_name),
    **dict.fromkeys(("num_classes", "freeze_epochs"), _is_int),
    "checkpoint_every_n_steps": _is_optional(_is_int),
    **dict.fromkeys(("label_smoothing", "asl_gamma_neg", "asl_gamma_pos", "asl_clip", "lr", "backbone_lr_mult",
                     "weight_decay", "momentum", "warmup_epochs", "pct_start", "drop_rate", "drop_path_rate",
                     "residual_init"), is_finite_number),
    **dict.fromkeys(("layer_decay", "ema_decay"), _is_optional(is_finite_number)),
    **dict.fromkeys(("freeze_norm_stats", "compile", "plots", "sync_norm"), lambda value: isinstance(value, bool)),
    "classes": _is_optional(_is_class_list),
    "head_args": _is_optional(_is_plain_head_args),
    "preprocessing": _is_optional(_is_preprocessing),
}


def trusted_hyperparameters(saved: Any) -> tuple[dict[str, Any], list[str]]:
    """Split a checkpoint's saved hyperparameters into those it may restore and the names of the rest.

    A checkpoint comes from wherever its user got it, so it may say what the network is and how it
    was trained, but never make the tool fetch, read or import anything. Kept: the entries of
    :data:`RESTORABLE_HYPERPARAMETERS` whose values pass their test, and ``arch`` when it names an
    architecture (its ``.tag`` dropped: a tag means published weights to download). Left out:
    ``pretrained`` (weights to download or read), Lightning's ``_class_path`` and
    ``_instantiator``, every other name, and every value of the wrong type.
    """
    if not isinstance(saved, Mapping):
        return {}, []
    kept: dict[str, Any] = {}
    for key, value in saved.items():
        if key == "arch" and isinstance(value, str) and value.split(".")[0] in ARCHS:
            kept[key] = value.split(".")[0]
        elif key in RESTORABLE_HYPERPARAMETERS and RESTORABLE_HYPERPARAMETERS[key](value):
            kept[key] = value
    return kept, sorted(str(key) for key in saved if key not in kept)
