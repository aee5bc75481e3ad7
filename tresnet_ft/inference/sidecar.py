"""The JSON written next to an exported model, so it can be used without this package.

It says how to prepare the input (resize rule, scaling, mean/std, layout, dtype), what the
output means (class names in order, softmax or sigmoid) and, for multi-label, the decision
thresholds. Only plain JSON values (lists, numbers, strings).
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..version import __version__
from ..classifier.checkpoint import ClassifierInfo
from ..data.preprocessing import EvalPreprocessing, short_repr
from ..errors import InvalidValueError, MissingInputError
from ..outputs import atomic_output, check_output
from .exportable import INPUT_DTYPES

SIDECAR_SUFFIX = ".json"
# Far above any real sidecar (11,221 classes with thresholds: ~0.5 MB); a larger file is not ours.
MAX_SIDECAR_BYTES = 16 * 2**20


def sidecar_path(model_path: Path) -> Path:
    """``model.onnx`` → ``model.onnx.json`` (appended, so it never collides with another file's)."""
    return model_path.with_name(model_path.name + SIDECAR_SUFFIX)


def sidecar_metadata(info: ClassifierInfo, model_file: str, export_format: str, input_dtype: str,
                     opset: int | None, max_abs_diff: float | None) -> dict[str, Any]:
    """Everything a consumer needs besides the model file, as plain JSON values."""
    size = info.image_size
    return {
        "tresnet_ft_version": __version__, "format": export_format, "file": model_file, "opset": opset,
        "arch": info.arch, "head": info.head, "task": info.task, "classes": list(info.classes),
        "image_size": size,
        "input": {"name": "images", "shape": ["batch", 3, size, size], "dtype": input_dtype,
                  "layout": "NCHW, RGB channel order"},
        "preprocessing": _preprocessing(info, input_dtype),
        "output": {"name": "logits", "shape": ["batch", info.num_classes], "dtype": "float32",
                   "activation": "sigmoid" if info.task == "multi_label" else "softmax"},
        "thresholds": _thresholds(info),
        "check_max_abs_diff": max_abs_diff,
    }


def check_sidecar(model_path: Path, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse a sidecar path that is not ours to replace (:func:`tresnet_ft.outputs.check_output`).

    Raises:
        InvalidValueError: ``<model_path>.json`` is a folder, a device, a FIFO or a socket, or one of ``inputs``.
    """
    return check_output(sidecar_path(model_path), inputs, fix=_sidecar_fix(model_path))


def write_sidecar(model_path: Path, metadata: dict[str, Any], inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Write ``metadata`` to ``<model_path>.json`` atomically: a previous sidecar stays whole until
    the new one is complete (:func:`tresnet_ft.outputs.atomic_output`).

    Raises:
        InvalidValueError: see :func:`check_sidecar`.
        DiskFullError: the disk filled up; a previous sidecar is kept as it was.
    """
    path = sidecar_path(model_path)
    text = json.dumps(metadata, indent=2, ensure_ascii=False) + "\n"
    with atomic_output(path, inputs, fix=_sidecar_fix(model_path)) as partial:
        partial.write_text(text, encoding="utf-8")
    return path


def read_sidecar(model_path: Path) -> tuple[ClassifierInfo, dict[str, Any]]:
    """Read ``<model_path>.json`` back: the :class:`ClassifierInfo` it describes and the whole JSON.

    The file comes from wherever the model came from, so it is read as untrusted JSON: bounded in
    size, every value checked by :meth:`ClassifierInfo.from_dict` (classes, task, preprocessing,
    thresholds), the input dtype one of :data:`INPUT_DTYPES`.

    Raises:
        MissingInputError: there is no sidecar next to the model.
        InvalidValueError: the sidecar is not JSON, too large, or describes no usable classifier.
    """
    model_path = Path(model_path)
    path = sidecar_path(model_path)
    if not path.is_file():
        raise MissingInputError(
            f"Expected {path.name} next to {model_path} (the sidecar `tresnet-ft export` writes: classes, "
            "preprocessing, thresholds), but there is none. Fix: export with `tresnet-ft export CKPT -o "
            f"{model_path.name}`, which writes both, or copy the sidecar along with the model.")
    try:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            raise InvalidValueError(f"it is {path.stat().st_size} bytes, more than a sidecar can be "
                                    f"({MAX_SIDECAR_BYTES})")
        metadata = json.loads(path.read_text(encoding="utf-8"))
        return _sidecar_info(metadata), metadata
    except (UnicodeDecodeError, json.JSONDecodeError, InvalidValueError, RecursionError) as err:
        raise InvalidValueError(f"Cannot use {path}: {err}. Fix: export the model again with "
                                "`tresnet-ft export`, which writes a matching sidecar.") from None


def _sidecar_info(metadata: Any) -> ClassifierInfo:
    """The classifier a parsed sidecar describes (each value checked)."""
    if not isinstance(metadata, dict):
        raise InvalidValueError(f"expected a JSON object, but got {type(metadata).__name__}")
    given_input = metadata.get("input")
    dtype = given_input.get("dtype") if isinstance(given_input, dict) else None
    if metadata.get("format") != "onnx" or dtype not in INPUT_DTYPES:
        raise InvalidValueError(f"expected format 'onnx' and an input dtype in {list(INPUT_DTYPES)}, but got "
                                f"{short_repr(metadata.get('format'))} and {short_repr(dtype)}")
    given = metadata.get("preprocessing")
    names = {field.name for field in dataclasses.fields(EvalPreprocessing)}
    preprocessing = ({key: value for key, value in given.items() if key in names} if isinstance(given, dict)
                     else given)
    if isinstance(preprocessing, dict):
        preprocessing["image_size"] = metadata.get("image_size")
    thresholds = metadata.get("thresholds")
    values = {"arch": metadata.get("arch"), "classes": metadata.get("classes"), "task": metadata.get("task"),
              "head": metadata.get("head"), "preprocessing": preprocessing,
              "thresholds": thresholds.get("tuned") if isinstance(thresholds, dict) else None}
    return ClassifierInfo.from_dict(values)


def _sidecar_fix(model_path: Path) -> str:
    # The sidecar's name follows the model's, so the fix is another -o (or moving the old thing away).
    return (f"move {sidecar_path(model_path)} away (the sidecar is always the model's path plus "
            f"{SIDECAR_SUFFIX}), or choose another -o")


def _preprocessing(info: ClassifierInfo, input_dtype: str) -> dict[str, Any]:
    """The checkpoint's :class:`EvalPreprocessing` settings, plus each step in words."""
    preprocessing = info.preprocessing
    size = preprocessing.image_size
    if preprocessing.eval_crop == "center_crop":
        resize = (f"resize the shorter side to {preprocessing.resize_side} keeping the aspect ratio, then "
                  f"crop the central {size}x{size}")
    else:
        resize = f"resize to {size}x{size} ignoring the aspect ratio (squish, no crop)"
    steps = "done inside the model" if input_dtype == "uint8" else "done by the caller"
    settings = preprocessing.to_dict()
    del settings["image_size"]  # the sidecar's top level and input shape say it already
    return {
        "resize": resize, **settings,
        "interpolation": "area when shrinking, bilinear when enlarging (OpenCV INTER_AREA / INTER_LINEAR)",
        "normalisation": f"x = (pixels / 255 - mean) / std per channel ({steps})",
    }


def _thresholds(info: ClassifierInfo) -> dict[str, Any] | None:
    if info.task != "multi_label":
        return None
    tuned = _plain(info.thresholds) if info.thresholds is not None else None
    return {"rule": "predict a tag when sigmoid(logit) > its threshold",
            "per_class": _plain(info.decision_thresholds()),
            "source": "tuned on validation data" if tuned is not None else "default 0.5 (none tuned)",
            "tuned": tuned}


def _plain(value: Any) -> Any:
    """Tensors and tuples inside ``value`` → lists, so ``json.dumps`` takes it."""
    if isinstance(value, torch.Tensor):
        array = value.detach().cpu().numpy()
        return _float32_to_plain(array) if array.dtype == np.float32 else array.tolist()
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _float32_to_plain(values: np.ndarray) -> Any:
    # float32 0.3 is 0.30000001192092896 as a double; write the shortest decimal that reads back
    # as the same float32 (0.3), which is what a person reading the file expects.
    if values.ndim == 0:
        return float(str(np.float32(values)))
    return [_float32_to_plain(row) for row in values]
