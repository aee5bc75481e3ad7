"""Per-image transforms (albumentations 2.0) and the tensor conversion TResNet expects.

Train: random-resized crop (or squish-resize + random crop, or plain squish), horizontal flip, a
RandAugment-style policy (``N`` ops drawn from :func:`randaugment_ops`, strength ``M`` of 30),
and Cutout (CoarseDropout). Eval: what :class:`~tresnet_ft.data.preprocessing.EvalPreprocessing`
says: squish-resize to the target square (the TResNet authors report that a center crop hurts
Cars), or resize + center crop as an option.

Output: ``[3, H, W]``, either ``float32`` (``output="float"``: ``x / 255``, then ``(x - mean) /
std``) or ``uint8`` (``output="uint8"``: 4x fewer bytes through the loader; convert on the device
with :meth:`EvalPreprocessing.to_float`). TResNet takes RGB in ``[0, 1]`` with no mean/std, so the
default normalisation is the identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
import torch
from ..errors import InvalidValueError
from .preprocessing import EvalPreprocessing, images_to_float

# images_to_float lives in preprocessing.py; it stays importable from here for older code.
__all__ = ["ImageTransform", "TransformConfig", "build_transforms", "eval_ops", "eval_transform",
           "images_to_float", "randaugment_ops", "train_stages"]

TrainCrop = Literal["random_resized_crop", "squish_random_crop", "squish"]
Output = Literal["float", "uint8"]

FILL = 128  # grey for pixels that geometric ops uncover, as in the original RandAugment code
MAX_MAGNITUDE = 30  # RandAugment's magnitude scale
CROP_RATIO = (3 / 4, 4 / 3)  # aspect range of the random-resized crop (the Inception/timm default)
SQUISH_MARGIN = 0.125  # squish_random_crop: resize to S*(1+margin), then crop S


@dataclass(frozen=True)
class TransformConfig:
    """Training augmentation, plus the evaluation preprocessing whose side ``S`` both pipelines use
    (any multiple of 4 from 32: 224, 368, 448, ...)."""

    preprocessing: EvalPreprocessing = EvalPreprocessing()  # output side S, eval resize, mean/std
    train_crop: TrainCrop = "random_resized_crop"
    crop_scale: tuple[float, float] = (0.25, 1.0)  # area range of the random-resized crop
    hflip: float = 0.5  # probability of a horizontal flip
    randaugment_ops: int = 2  # N ops per image; 0 turns the policy off
    randaugment_magnitude: float = 9  # M in [0, 30]: the strongest each op may get
    cutout: float = 0.5  # probability of one Cutout hole; 0 turns it off
    cutout_size: float = 0.5  # hole side as a fraction of S (the ASL recipe's cutout factor)

    def __post_init__(self) -> None:
        if not 0 <= self.randaugment_magnitude <= MAX_MAGNITUDE:
            raise InvalidValueError(
                f"Expected randaugment_magnitude in [0, {MAX_MAGNITUDE}], but got {self.randaugment_magnitude}."
            )
        for name in ("hflip", "cutout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InvalidValueError(
                    f"Expected {name} to be a probability in [0, 1], but got {getattr(self, name)}."
                )
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise InvalidValueError(f"Expected crop_scale as (low, high) with 0 < low <= high <= 1 (area shares of the "
                                    f"image), but got {self.crop_scale}. Fix: --data.crop_scale [0.25, 1.0].")
        if self.randaugment_ops < 0:
            raise InvalidValueError(f"Expected randaugment_ops >= 0 (0 turns RandAugment off), but got "
                                    f"{self.randaugment_ops}.")
        if not 0.0 < self.cutout_size <= 1.0:
            raise InvalidValueError(f"Expected cutout_size in (0, 1] (the hole's side as a share of the image), but "
                                    f"got {self.cutout_size}. Fix: --data.cutout_size 0.5, or --data.cutout 0 for none.")

    @property
    def image_size(self) -> int:
        """The output side ``S`` of both pipelines (the preprocessing owns it)."""
        return self.preprocessing.image_size


def randaugment_ops(magnitude: float) -> list[A.BasicTransform]:
    """The RandAugment op set built from albumentations ops, each at most ``magnitude`` / 30 strong.

    Each application draws its strength uniformly up to the maximum (and a random sign where the
    op has one), which is what timm calls random-magnitude RandAugment; albumentations 2.0 ranges
    are sampled that way. Every op has ``p=1``: the policy picks which ones run.
    """
    m = magnitude / MAX_MAGNITUDE
    posterize_bits = max(1, round(8 - 4 * m))
    affine = dict(p=1.0, border_mode=cv2.BORDER_CONSTANT, fill=FILL)
    return [
        A.NoOp(p=1.0),  # identity keeps some images close to the original
        A.AutoContrast(p=1.0),
        A.Equalize(p=1.0),
        A.Affine(rotate=(-30 * m, 30 * m), **affine),
        A.Solarize(threshold_range=(1 - m, 1.0), p=1.0),
        A.ColorJitter(
            brightness=0, contrast=0, saturation=(1 - 0.9 * m, 1 + 0.9 * m), hue=0, p=1.0
        ),
        A.Posterize(num_bits=(posterize_bits, 8), p=1.0),
        A.RandomBrightnessContrast(brightness_limit=0, contrast_limit=0.9 * m, p=1.0),
        A.RandomBrightnessContrast(brightness_limit=0.9 * m, contrast_limit=0, p=1.0),
        A.Sharpen(alpha=(0.0, 0.9 * m), lightness=(1.0, 1.0), p=1.0),
        A.Affine(shear={"x": (-17 * m, 17 * m), "y": (0, 0)}, **affine),
        A.Affine(shear={"x": (0, 0), "y": (-17 * m, 17 * m)}, **affine),
        A.Affine(translate_percent={"x": (-0.45 * m, 0.45 * m), "y": (0, 0)}, **affine),
        A.Affine(translate_percent={"x": (0, 0), "y": (-0.45 * m, 0.45 * m)}, **affine),
    ]


def train_stages(config: TransformConfig) -> tuple[list, list, list]:
    """The training pipeline as ``(resize, policy, finish)`` albumentations steps.

    ``resize`` crops/resizes to ``S`` and flips, ``policy`` is RandAugment, ``finish`` is Cutout.
    :class:`ImageTransform` runs the policy at whichever of the source and output resolutions
    is smaller: the same ops on fewer pixels (a 32 px CIFAR image is augmented before it is
    upscaled to 224, which is ~5x cheaper than after).
    """
    size = config.image_size
    resize = _train_resize(config)
    if config.hflip > 0:
        resize.append(A.HorizontalFlip(p=config.hflip))
    policy = []
    if config.randaugment_ops > 0:
        ops = randaugment_ops(config.randaugment_magnitude)
        policy.append(A.SomeOf(ops, n=config.randaugment_ops, replace=True, p=1.0))
    finish = []
    if config.cutout > 0:
        hole = max(1, round(config.cutout_size * size))
        finish.append(
            A.CoarseDropout(
                num_holes_range=(1, 1),
                hole_height_range=(hole, hole),
                hole_width_range=(hole, hole),
                fill="random_uniform",
                p=config.cutout,
            )
        )
    return resize, policy, finish


def eval_ops(preprocessing: EvalPreprocessing) -> list[A.BasicTransform]:
    """The evaluation pipeline's albumentations steps: squish, or resize + center crop."""
    size = preprocessing.image_size
    if preprocessing.eval_crop == "center_crop":
        return [
            A.SmallestMaxSize(max_size=preprocessing.resize_side, area_for_downscale="image"),
            A.CenterCrop(size, size),
        ]
    return [A.Resize(size, size, area_for_downscale="image")]


def _train_resize(config: TransformConfig) -> list[A.BasicTransform]:
    # Bilinear, not area resampling: area avoids aliasing when shrinking but costs ~6x more for
    # fractional factors (0.9 vs 0.14 ms per 500 px photo), and the loader already decodes large
    # JPEGs at 1/2, 1/4 or 1/8 scale, so the crop rarely shrinks by more than 2x.
    size = config.image_size
    if config.train_crop == "random_resized_crop":
        return [A.RandomResizedCrop((size, size), scale=config.crop_scale, ratio=CROP_RATIO)]
    if config.train_crop == "squish_random_crop":
        padded = round(size * (1 + SQUISH_MARGIN))
        return [A.Resize(padded, padded), A.RandomCrop(size, size)]
    if config.train_crop == "squish":
        return [A.Resize(size, size)]
    raise InvalidValueError(
        f"Expected train_crop to be one of 'random_resized_crop', 'squish_random_crop', 'squish', "
        f"but got {config.train_crop!r}."
    )


class ImageTransform:
    """Callable: RGB ``uint8 [H, W, 3]`` → tensor ``[3, S, S]`` (float32 or uint8, see module doc).

    Args:
        resize: steps that bring the image to ``S x S`` (crop, resize, flip).
        policy: augmentation run at the smaller of the source and output resolutions.
        finish: steps run last, at ``S x S`` (Cutout).
    """

    def __init__(
        self,
        resize: Sequence[A.BasicTransform],
        policy: Sequence[A.BasicTransform],
        finish: Sequence[A.BasicTransform],
        config: TransformConfig,
        output: Output,
    ) -> None:
        if output not in ("float", "uint8"):
            raise InvalidValueError(f"Expected output to be 'float' or 'uint8', but got {output!r}.")
        self.resize = A.Compose(list(resize))
        self.policy = A.Compose(list(policy)) if policy else None
        self.finish = A.Compose(list(finish)) if finish else None
        self.config = config
        self.output = output

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        policy_first = self.policy is not None and min(image.shape[:2]) < self.config.image_size
        if policy_first:
            image = self.policy(image=image)["image"]
        image = self.resize(image=image)["image"]
        if self.policy is not None and not policy_first:
            image = self.policy(image=image)["image"]
        if self.finish is not None:
            image = self.finish(image=image)["image"]
        chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        if self.output == "uint8":
            return chw  # a view; the batch collation makes it contiguous
        return self.config.preprocessing.to_float(chw)

    def __repr__(self) -> str:
        return f"ImageTransform(output={self.output!r}, resize={self.resize!r}, policy={self.policy!r}, finish={self.finish!r})"


def build_transforms(
    config: TransformConfig | None = None,
    train: bool = True,
    output: Output = "float",
    **overrides: Any,
) -> ImageTransform:
    """Build the train or eval transform.

    Args:
        config: settings; defaults to ``TransformConfig()``.
        train: the augmenting training pipeline (True) or the deterministic eval one (False).
        output: ``"float"`` for ``float32 [3, S, S]`` normalised, ``"uint8"`` for ``uint8 [3, S, S]``.
        **overrides: fields of :class:`TransformConfig` or of its
            :class:`~tresnet_ft.data.preprocessing.EvalPreprocessing` to change, e.g. ``image_size=448``.

    Example:
        >>> transform = build_transforms(train=False, image_size=448)
        >>> transform(np.zeros((300, 500, 3), np.uint8)).shape
        torch.Size([3, 448, 448])
    """
    config = config or TransformConfig()
    train_names = {field.name for field in fields(TransformConfig)} - {"preprocessing"}
    eval_names = {field.name for field in fields(EvalPreprocessing)}
    unknown = sorted(set(overrides) - train_names - eval_names)
    if unknown:
        raise InvalidValueError(
            f"Unknown transform settings {unknown}; expected some of {sorted(train_names | eval_names)}."
        )
    preprocessing = replace(config.preprocessing, **{k: v for k, v in overrides.items() if k in eval_names})
    if not train:
        return eval_transform(preprocessing, output)
    config = replace(config, preprocessing=preprocessing, **{k: v for k, v in overrides.items() if k in train_names})
    return ImageTransform(*train_stages(config), config=config, output=output)


def eval_transform(preprocessing: EvalPreprocessing, output: Output = "float") -> ImageTransform:
    """The deterministic evaluation transform: RGB ``uint8 [H, W, 3]`` → ``[3, S, S]``.

    ``output="float"``: ``float32``, scaled and normalised; ``"uint8"``: the same resize without
    scaling (convert batches on the device with :meth:`EvalPreprocessing.to_float`).
    """
    config = TransformConfig(preprocessing=preprocessing)  # ImageTransform reads S and mean/std from it
    return ImageTransform(eval_ops(preprocessing), [], [], config=config, output=output)
