"""How evaluation images are prepared: one value object, made once and read everywhere.

The DataModule makes an :class:`EvalPreprocessing` from its arguments; the LightningModule keeps
it (as a plain dict in its hyperparameters), checkpoints store it, and prediction, export and the
sidecar JSON read it back. Every rule about evaluation input lives here: the resize (squish or
resize + centre crop), the smallest side a JPEG may be decoded down to, and the ``uint8 → float``
scaling with the optional mean/std. TResNet takes RGB in ``[0, 1]`` with no mean/std, so the
default normalisation is the identity.

Example:
    >>> preprocessing = EvalPreprocessing(image_size=224, eval_crop="center_crop")
    >>> preprocessing.decode_size
    256
    >>> EvalPreprocessing.from_dict(preprocessing.to_dict()) == preprocessing
    True
"""

from __future__ import annotations

import math
import numbers
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, Optional

import torch

from ..errors import InvalidValueError
from ..models.tresnet import INPUT_MULTIPLE, MIN_INPUT_SIZE, is_input_side

EvalCrop = Literal["squish", "center_crop"]
EVAL_CROPS: tuple[str, ...] = ("squish", "center_crop")
# Over 9x the paper's 448 px per side: one image is then 192 MiB of float input. Larger sizes come from
# a typo or a crafted checkpoint, and would exhaust memory at the first batch or export's sample input.
MAX_IMAGE_SIZE = 4096


@dataclass(frozen=True)
class EvalPreprocessing:
    """Evaluation preprocessing: RGB ``uint8 [H, W, 3]`` → ``[3, S, S]`` → model input.

    The field names are the DataModule's (``--data.image_size``, ``--data.eval_crop``, ...), so a
    flag, a field and a checkpoint key are spelled the same. Invalid values raise
    :class:`~tresnet_ft.errors.InvalidValueError` when the object is made.
    """

    image_size: int = 224  # output side S; a multiple of 4, at least 32 (224, 368, 448, ...)
    eval_crop: EvalCrop = "squish"  # squish: resize to S x S (the authors' choice); center_crop: see below
    eval_crop_fraction: float = 0.875  # center_crop: resize the short side to S / fraction, crop S x S
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # in [0, 1] units; TResNet: none
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        # Lists from YAML, JSON and checkpoints become tuples of floats, so that equal settings
        # compare equal however they arrived.
        object.__setattr__(self, "mean", _three_floats("mean", self.mean))
        object.__setattr__(self, "std", _three_floats("std", self.std))
        _check_image_size(self.image_size)
        if not isinstance(self.eval_crop, str) or self.eval_crop not in EVAL_CROPS:
            raise InvalidValueError(f"Expected eval_crop to be one of {list(EVAL_CROPS)}, but got "
                                    f"{short_repr(self.eval_crop)}.")
        # A string or None from a checkpoint must be this error, not a TypeError from the comparison.
        fraction = self.eval_crop_fraction
        if not is_finite_number(fraction) or not 0.0 < fraction <= 1.0:
            raise InvalidValueError(
                f"Expected eval_crop_fraction in (0, 1], but got {short_repr(fraction)}.")
        if min(self.std) <= 0:
            raise InvalidValueError(f"Expected a positive std per channel, but got {self.std}.")

    @property
    def resize_side(self) -> int:
        """The shorter side of the image after the eval resize, before any crop: ``S`` for squish,
        ``round(S / eval_crop_fraction)`` for center_crop."""
        if self.eval_crop == "center_crop":
            return round(self.image_size / self.eval_crop_fraction)
        return self.image_size

    @property
    def decode_size(self) -> int:
        """The smallest side a JPEG may be decoded down to (at 1/2..1/8 scale) without changing
        what the eval resize produces: decoding smaller would discard pixels the resize keeps."""
        return self.resize_side

    @property
    def identity_normalisation(self) -> bool:
        """Whether mean is 0 and std is 1 (TResNet), so that ``x / 255`` is the whole scaling."""
        return self.mean == (0.0, 0.0, 0.0) and self.std == (1.0, 1.0, 1.0)

    def to_float(self, images: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``uint8`` images ``[..., 3, H, W]`` → ``float32`` ``(x / 255 - mean) / std``, same shape.

        Runs wherever ``images`` is (convert after moving a uint8 batch to the GPU). ``out``: a
        ``float32`` tensor of the same shape to write into, e.g. a reused buffer; returned.
        """
        out = images.float() if out is None else out.copy_(images, non_blocking=True)
        out.div_(255.0)
        if self.identity_normalisation:
            return out
        return out.sub_(_per_channel(self.mean, out)).div_(_per_channel(self.std, out))

    def to_unit_range(self, images: torch.Tensor) -> torch.Tensor:
        """Undo the mean/std: model input ``float [..., 3, H, W]`` → RGB in ``[0, 1]`` (for plots)."""
        if self.identity_normalisation:
            return images
        return images * _per_channel(self.std, images) + _per_channel(self.mean, images)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (int, str, float, lists), so ``torch.load(weights_only=True)`` and JSON read them."""
        return {"image_size": int(self.image_size), "eval_crop": str(self.eval_crop),
                "eval_crop_fraction": float(self.eval_crop_fraction),
                "mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EvalPreprocessing:
        """The inverse of :meth:`to_dict`; missing keys take the defaults, unknown keys are an error.

        ``values`` may come from a checkpoint of unknown origin, so every wrong type is an
        :class:`~tresnet_ft.errors.InvalidValueError` naming the setting, never a ``TypeError``.
        """
        if not isinstance(values, Mapping):
            raise InvalidValueError(f"Expected the evaluation preprocessing to be a dict of settings, but got "
                                    f"{type(values).__name__}.")
        known = {field.name for field in fields(cls)}
        unknown = sorted(str(key) for key in set(values) - known)  # str: keys of mixed types do not sort
        if unknown:
            raise InvalidValueError(f"Unknown evaluation preprocessing settings {unknown}; expected some of "
                                    f"{sorted(known)}.")
        return cls(**values)

    @classmethod
    def coerce(cls, value: EvalPreprocessing | Mapping[str, Any] | None) -> EvalPreprocessing:
        """``value`` as an :class:`EvalPreprocessing`: itself, built from a dict, or the default (None)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        raise InvalidValueError(f"Expected an EvalPreprocessing or a dict of its settings, but got "
                                f"{type(value).__name__}.")


def images_to_float(
    images: torch.Tensor,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    """``uint8`` images ``[..., 3, H, W]`` → ``float32`` ``(x / 255 - mean) / std``, same shape.

    :meth:`EvalPreprocessing.to_float` for a mean and std without the rest of the settings.
    """
    return EvalPreprocessing(mean=tuple(mean), std=tuple(std)).to_float(images)  # type: ignore[arg-type]


def _per_channel(values: tuple[float, float, float], like: torch.Tensor) -> torch.Tensor:
    """``values`` as ``[3, 1, 1]`` on ``like``'s device and dtype, filled there: copying a host list to
    a GPU would wait for the GPU at every batch. (Slice-wise in-place ops would avoid the tensor, but
    the ONNX exporter traces them wrongly.)"""
    return torch.cat([torch.full((1, 1, 1), value, dtype=like.dtype, device=like.device) for value in values])


def _three_floats(name: str, values: Sequence[float]) -> tuple[float, float, float]:
    # Only a list or tuple: float() would also take the characters of "123" or a dict's keys. Only
    # finite numbers: a NaN or an infinity would turn every prediction into NaN.
    floats: tuple[float, ...] = ()
    if isinstance(values, (list, tuple)) and all(is_finite_number(v) for v in values):
        floats = tuple(float(v) for v in values)
    if len(floats) != 3:
        raise InvalidValueError(f"Expected {name} to be three numbers (R, G, B), but got {short_repr(values)}.")
    return floats  # type: ignore[return-value]


def is_finite_number(value: Any) -> bool:
    """A finite real number (NumPy's too), not a bool; an int small enough that float() cannot overflow."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return abs(value) < 2**53 if isinstance(value, numbers.Integral) else math.isfinite(value)


def short_repr(value: Any) -> str:
    """``repr`` cut to a few dozen characters, for messages about values read from files; an int
    too long for Python to print (over 4300 digits) is described instead of raising."""
    try:
        return reprlib.repr(value)
    except ValueError:
        return f"an {type(value).__name__} too large to print"


def _check_image_size(size: int) -> None:
    """Checked where the size is chosen, so a bad one fails before any data or model is built."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise InvalidValueError(f"Expected image_size to be an integer multiple of {INPUT_MULTIPLE}, but got "
                                f"{short_repr(size)}.")
    if size > MAX_IMAGE_SIZE:
        raise InvalidValueError(
            f"Expected image_size to be at most {MAX_IMAGE_SIZE} (one such image is already 192 MiB of model input), "
            f"but got {short_repr(size)}. Fix: choose a multiple of {INPUT_MULTIPLE} up to {MAX_IMAGE_SIZE}, "
            "e.g. --data.image_size 448.")
    if is_input_side(size):
        return
    below = max(MIN_INPUT_SIZE, size // INPUT_MULTIPLE * INPUT_MULTIPLE)
    nearest = f"{below} or {below + INPUT_MULTIPLE}" if size > below else f"{below}"
    raise InvalidValueError(
        f"Expected image_size to be a multiple of {INPUT_MULTIPLE} of at least {MIN_INPUT_SIZE} (TResNet's "
        f"SpaceToDepth stem folds {INPUT_MULTIPLE}x{INPUT_MULTIPLE} blocks), but got {short_repr(size)}. "
        f"Fix: --data.image_size {nearest}.")
