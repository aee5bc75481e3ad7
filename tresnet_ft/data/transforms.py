"""Per-image transforms (albumentations 2.0) and the tensor conversion TResNet expects.

Train: random-resized crop (or squish-resize + random crop, or plain squish), horizontal flip, a
RandAugment-style policy (``N`` ops drawn from :func:`randaugment_ops`, strength ``M`` of 30),
and Cutout (CoarseDropout). Eval: squish-resize to the target square (the TResNet authors report
that a center crop hurts Cars), or resize + center crop as an option.

Output: ``[3, H, W]``, either ``float32`` (``output="float"``: ``x / 255``, then ``(x - mean) /
std``) or ``uint8`` (``output="uint8"``: 4x fewer bytes through the loader; convert on the device
with :func:`images_to_float`). TResNet takes RGB in ``[0, 1]`` with no mean/std, so the default
normalisation is the identity; other backbones pass theirs (see :data:`NORMALIZATIONS`).
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

TrainCrop = Literal["random_resized_crop", "squish_random_crop", "squish"]
EvalCrop = Literal["squish", "center_crop"]
Output = Literal["float", "uint8"]

# mean and std in [0, 1] units, per backbone family; TResNet was trained without normalisation.
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "tresnet": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
FILL = 128  # grey for pixels that geometric ops uncover, as in the original RandAugment code
MAX_MAGNITUDE = 30  # RandAugment's magnitude scale


@dataclass(frozen=True)
class TransformConfig:
    """Augmentation and preprocessing settings (all resolutions work: 224, 368, 448, ...)."""

    image_size: int = 224  # output side S
    train_crop: TrainCrop = "random_resized_crop"
    crop_scale: tuple[float, float] = (0.25, 1.0)  # area range of the random-resized crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect range of the random-resized crop
    squish_margin: float = 0.125  # squish_random_crop: resize to S*(1+margin), then crop S
    hflip: float = 0.5  # probability of a horizontal flip
    randaugment_ops: int = 2  # N ops per image; 0 turns the policy off
    randaugment_magnitude: float = 9  # M in [0, 30]: the strongest each op may get
    cutout: float = 0.5  # probability of one Cutout hole; 0 turns it off
    cutout_size: float = 0.5  # hole side as a fraction of S (the ASL recipe's cutout factor)
    train_antialias: bool = False  # area resampling when the train crop shrinks (slow; see below)
    eval_crop: EvalCrop = "squish"
    eval_crop_fraction: float = 0.875  # center_crop: resize the short side to S/fraction first
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # in [0, 1] units
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise InvalidValueError(
                f"Expected image_size of at least 8 pixels, but got {self.image_size}."
            )
        if not 0 <= self.randaugment_magnitude <= MAX_MAGNITUDE:
            raise InvalidValueError(
                f"Expected randaugment_magnitude in [0, {MAX_MAGNITUDE}], but got {self.randaugment_magnitude}."
            )
        for name in ("hflip", "cutout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InvalidValueError(
                    f"Expected {name} to be a probability in [0, 1], but got {getattr(self, name)}."
                )
        if min(self.std) <= 0:
            raise InvalidValueError(f"Expected a positive std per channel, but got {self.std}.")


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


def eval_ops(config: TransformConfig) -> list[A.BasicTransform]:
    """The evaluation pipeline's albumentations steps: squish, or resize + center crop."""
    size = config.image_size
    if config.eval_crop == "squish":
        return [A.Resize(size, size, area_for_downscale="image")]
    if config.eval_crop == "center_crop":
        short_side = round(size / config.eval_crop_fraction)
        return [
            A.SmallestMaxSize(max_size=short_side, area_for_downscale="image"),
            A.CenterCrop(size, size),
        ]
    raise InvalidValueError(
        f"Expected eval_crop to be 'squish' or 'center_crop', but got {config.eval_crop!r}."
    )


def _train_resize(config: TransformConfig) -> list[A.BasicTransform]:
    # Area resampling avoids aliasing when shrinking but costs ~6x more than bilinear for
    # fractional factors (0.9 vs 0.14 ms per 500 px photo). The loader already decodes large
    # JPEGs at 1/2, 1/4 or 1/8 scale, so the crop rarely shrinks by more than 2x: bilinear.
    size = config.image_size
    area = "image" if config.train_antialias else None
    if config.train_crop == "random_resized_crop":
        return [
            A.RandomResizedCrop(
                (size, size),
                scale=config.crop_scale,
                ratio=config.crop_ratio,
                area_for_downscale=area,
            )
        ]
    if config.train_crop == "squish_random_crop":
        padded = round(size * (1 + config.squish_margin))
        return [A.Resize(padded, padded, area_for_downscale=area), A.RandomCrop(size, size)]
    if config.train_crop == "squish":
        return [A.Resize(size, size, area_for_downscale=area)]
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
        return images_to_float(chw, self.config.mean, self.config.std)

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
        **overrides: fields of :class:`TransformConfig` to change, e.g. ``image_size=448``.

    Example:
        >>> transform = build_transforms(train=False, image_size=448)
        >>> transform(np.zeros((300, 500, 3), np.uint8)).shape
        torch.Size([3, 448, 448])
    """
    config = config or TransformConfig()
    known = {field.name for field in fields(TransformConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InvalidValueError(f"Unknown transform settings {unknown}; expected some of {sorted(known)}.")
    config = replace(config, **overrides)
    stages = train_stages(config) if train else (eval_ops(config), [], [])
    return ImageTransform(*stages, config=config, output=output)


def images_to_float(
    images: torch.Tensor,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    """``uint8`` images ``[..., 3, H, W]`` → ``float32`` ``(x / 255 - mean) / std``, same shape.

    Runs wherever ``images`` is: call it after moving a uint8 batch to the GPU. With the TResNet
    default (mean 0, std 1) it is just ``x / 255``.
    """
    out = images.float().div_(255.0)
    if any(mean) or any(value != 1.0 for value in std):
        shape = (3, 1, 1)
        mean_t = torch.as_tensor(mean, dtype=out.dtype, device=out.device).view(shape)
        std_t = torch.as_tensor(std, dtype=out.dtype, device=out.device).view(shape)
        out = out.sub_(mean_t).div_(std_t)
    return out
