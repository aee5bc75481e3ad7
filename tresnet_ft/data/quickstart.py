"""An offline dataset generated on the fly: coloured shapes on noisy backgrounds.

Every image is a pure function of ``(seed, split, index)``, so runs are reproducible without any
file on disk. Single-label images hold one shape and the label is its kind (classes are
balanced: item ``i`` has label ``i mod K``). The multi-label variant draws one to three different
shapes per image and the target marks which kinds are present.
"""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np

from .base import SPLITS, DatasetInfo, LabelledDataset, Target, check_split
from ..errors import InvalidValueError

SHAPES = ("circle", "square", "triangle", "cross", "diamond")
DEFAULT_SIZES = {"train": 500, "val": 100, "test": 100}
MAX_SHAPES = 3  # per multi-label image


def describe_quickstart(root: object = None, multi_label: bool = False) -> DatasetInfo:
    """Task and class names (fixed)."""
    return DatasetInfo("multi_label" if multi_label else "single_label", SHAPES)


def prepare_quickstart(root: object = None, download: bool = False, progress: bool = True) -> None:
    """Nothing to prepare: images are generated when read."""


class QuickstartDataset(LabelledDataset):
    """Generated shapes; items are ``(uint8 [S, S, 3], int | float32 [5])``.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (different images each).
        num_images: items in the split (default 500 / 100 / 100).
        image_size: side ``S`` of the square images.
        multi_label: several shapes per image, multi-hot targets.
        seed: changes every image.
    """

    def __init__(
        self,
        split: str = "train",
        num_images: int | None = None,
        image_size: int = 64,
        multi_label: bool = False,
        seed: int = 0,
    ) -> None:
        check_split(split)
        if image_size < 16:
            raise InvalidValueError(f"Expected image_size of at least 16 pixels, but got {image_size}.")
        self.split, self.image_size, self.multi_label, self.seed = (
            split,
            image_size,
            multi_label,
            seed,
        )
        self.num_images = DEFAULT_SIZES[split] if num_images is None else int(num_images)
        if self.num_images < 1:
            raise InvalidValueError(f"Expected num_images of at least 1, but got {num_images}.")
        targets = np.stack([self._target(i) for i in range(self.num_images)])
        super().__init__(targets, SHAPES, "multi_label" if multi_label else "single_label")

    def __getitem__(self, index: int) -> tuple[np.ndarray, Target]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"Expected an index in [0, {self.num_images}), but got {index}.")
        kinds = self._kinds(index)
        rng = self._rng(index, "pixels")
        image = _noisy_background(rng, self.image_size)
        for kind, region in zip(
            kinds, _regions(rng, self.image_size, len(kinds), self.multi_label), strict=True
        ):
            _draw_shape(image, SHAPES[kind], rng, region)
        return image, self.target(index)

    def _rng(self, index: int, purpose: str) -> np.random.Generator:
        stream = SPLITS.index(self.split) * 2 + (purpose == "pixels")
        return np.random.default_rng([self.seed, stream, index])

    def _kinds(self, index: int) -> list[int]:
        if not self.multi_label:
            return [index % len(SHAPES)]
        rng = self._rng(index, "kinds")
        count = int(rng.integers(1, MAX_SHAPES + 1))
        return sorted(rng.choice(len(SHAPES), size=count, replace=False).tolist())

    def _target(self, index: int) -> np.ndarray:
        kinds = self._kinds(index)
        if not self.multi_label:
            return np.int64(kinds[0])
        target = np.zeros(len(SHAPES), dtype=np.float32)
        target[kinds] = 1.0
        return target


def _noisy_background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.integers(0, 256, size=3)
    # Low-resolution noise scaled up gives blotches, so the model must look at shape edges.
    coarse = rng.normal(0.0, 40.0, size=(size // 8, size // 8, 3)).astype(np.float32)
    blotches = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_LINEAR)
    grain = rng.normal(0.0, 12.0, size=(size, size, 3)).astype(np.float32)
    return np.clip(base + blotches + grain, 0, 255).astype(np.uint8)


def _regions(
    rng: np.random.Generator, size: int, count: int, multi_label: bool
) -> list[tuple[int, int, int]]:
    """Square regions ``(x0, y0, side)``, one per shape: distinct quadrants when there may be
    several shapes, so none hides another and every target is visible."""
    if not multi_label:
        return [(0, 0, size)]
    half = size // 2
    cells = rng.choice(4, size=count, replace=False)
    return [(int(cell % 2) * half, int(cell // 2) * half, half) for cell in cells]


def _draw_shape(
    image: np.ndarray, kind: str, rng: np.random.Generator, region: tuple[int, int, int]
) -> None:
    x0, y0, side = region
    radius = max(3, int(rng.uniform(0.25, 0.42) * side))
    cx, cy = (int(v) for v in rng.integers(radius, side - radius + 1, size=2) + (x0, y0))
    # A colour far from the local background keeps every shape visible.
    background = image[cy, cx].astype(int)
    color = tuple(
        int(v)
        for v in np.where(background > 127, rng.integers(0, 60, 3), rng.integers(196, 256, 3))
    )
    if kind == "circle":
        cv2.circle(image, (cx, cy), radius, color, thickness=-1, lineType=cv2.LINE_AA)
    elif kind == "square":
        cv2.rectangle(
            image, (cx - radius, cy - radius), (cx + radius, cy + radius), color, thickness=-1
        )
    elif kind == "cross":
        arm = max(2, radius // 3)
        cv2.rectangle(image, (cx - radius, cy - arm), (cx + radius, cy + arm), color, thickness=-1)
        cv2.rectangle(image, (cx - arm, cy - radius), (cx + arm, cy + radius), color, thickness=-1)
    else:
        corners = _TRIANGLE if kind == "triangle" else _DIAMOND
        points = np.array(
            [(cx + radius * dx, cy + radius * dy) for dx, dy in corners], dtype=np.int32
        )
        cv2.fillPoly(image, [points], color, lineType=cv2.LINE_AA)


_TRIANGLE = ((0.0, -1.0), (0.87, 0.5), (-0.87, 0.5))
_DIAMOND = ((0.0, -1.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0))


def load_quickstart(
    root: object,
    split: str,
    num_images: int | Mapping[str, int] | None = None,
    image_size: int = 64,
    multi_label: bool = False,
    seed: int = 0,
) -> QuickstartDataset:
    """The quickstart dataset's ``split`` (``root`` is ignored: nothing is read from disk).

    ``num_images`` is one count for every split, or counts by split (``{"train": 2800}``; splits
    not named keep their default size).
    """
    if isinstance(num_images, Mapping):
        num_images = check_split_counts(num_images).get(split)
    return QuickstartDataset(split, num_images, image_size, multi_label, seed)


def check_split_counts(num_images: Mapping[str, int]) -> Mapping[str, int]:
    """Return ``num_images`` (counts by split) if every key is a split; otherwise raise a ValueError."""
    unknown = sorted(set(num_images) - set(SPLITS))
    if unknown:
        raise InvalidValueError(f"Expected num_images keys among {list(SPLITS)}, but got {unknown}.")
    return num_images
