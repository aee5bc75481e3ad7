"""Image grids: a batch as the model sees it, or the worst predictions with coloured captions."""
from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from ...errors import InvalidValueError

_CAPTION_WIDTH = 28  # characters per caption line under a grid image
_CORRECT_COLOR, _WRONG_COLOR = "tab:green", "tab:red"


def plot_worst_predictions(
    images: torch.Tensor,
    true_labels: Sequence[str],
    predicted: Sequence[str],
    confidences: Sequence[float],
    ncols: int = 4,
    correct: Sequence[bool] | None = None,
) -> Figure:
    """Grid of images captioned "true / predicted (confidence)", green when right, red when wrong.

    Args:
        images: ``[M, 3, H, W]`` uint8 in [0, 255] or float in [0, 1] (clamped).
        true_labels: ``M`` captions of the true class (or tags, joined).
        predicted: ``M`` captions of the prediction.
        confidences: ``M`` probabilities of the prediction.
        ncols: images per row.
        correct: ``M`` flags for the caption colour; by default ``true_labels[i] == predicted[i]``.

    Returns:
        A figure with ``ceil(M / ncols) * ncols`` axes, the first ``M`` holding one image each.
    """
    m = _check_image_grid(images, true_labels, predicted, confidences, ncols)
    correct = [t == p for t, p in zip(true_labels, predicted)] if correct is None else list(correct)
    if len(correct) != m:
        raise InvalidValueError(f"Expected {m} correct flags, one per image, but got {len(correct)}.")
    captions = [f"{true_labels[i]} / {predicted[i]} ({float(confidences[i]):.2f})" for i in range(m)]
    colors = [_CORRECT_COLOR if right else _WRONG_COLOR for right in correct]
    return _image_grid(images, captions, colors, ncols,
                       "Worst-predicted validation images (true / predicted (probability))")


def plot_image_grid(
    images: torch.Tensor,
    captions: Sequence[str] | None = None,
    ncols: int = 4,
    title: str | None = None,
) -> Figure:
    """Images in a grid, each with an optional caption: a training batch, or tagged files.

    Args:
        images: ``[M, 3, H, W]`` uint8 in [0, 255] or float in [0, 1] (clamped), e.g. a batch
            from ``ImageDataModule.train_dataloader()`` as it comes (augmented, still uint8).
        captions: ``M`` strings shown above the images (wrapped), or None for none.
        ncols: images per row.
        title: a title over the whole grid.

    Returns:
        A figure with ``ceil(M / ncols) * ncols`` axes, the first ``M`` holding one image each.

    Example:
        >>> fig = plot_image_grid(torch.zeros(3, 3, 8, 8, dtype=torch.uint8), ["a", "b", "c"], ncols=2)
        >>> len(fig.axes), fig.axes[2].get_title()
        (4, 'c')
    """
    m = _check_images(images, ncols)
    if captions is not None and len(captions) != m:
        raise InvalidValueError(f"Expected {m} captions for {m} images, but got {len(captions)}.")
    return _image_grid(images, list(captions) if captions is not None else [""] * m, ["black"] * m,
                       ncols, title)


def _image_grid(images: torch.Tensor, captions: list[str], colors: list[str], ncols: int,
                title: str | None) -> Figure:
    m = images.shape[0]
    pixels = _images_to_uint8_hwc(images)
    ncols = min(ncols, m)
    nrows = math.ceil(m / ncols)
    fig = Figure(figsize=(2.6 * ncols, 3.0 * nrows), layout="constrained")
    for index, ax in enumerate(fig.subplots(nrows, ncols, squeeze=False).flat):
        ax.set_axis_off()
        if index >= m:
            continue
        ax.imshow(pixels[index])
        if captions[index]:
            ax.set_title(textwrap.fill(captions[index], _CAPTION_WIDTH), fontsize=8, color=colors[index])
    if title:
        fig.suptitle(title)
    return fig


def _check_image_grid(images, true_labels, predicted, confidences, ncols: int) -> int:
    m = _check_images(images, ncols)
    lengths = {"true_labels": len(true_labels), "predicted": len(predicted),
               "confidences": len(confidences)}
    if any(length != m for length in lengths.values()):
        raise InvalidValueError(f"Expected {m} captions for {m} images, but got {lengths}.")
    return m


def _check_images(images: torch.Tensor, ncols: int) -> int:
    if images.ndim != 4 or images.shape[1] != 3:
        raise InvalidValueError(f"Expected images of shape [M, 3, H, W], but got {list(images.shape)}.")
    if images.shape[0] == 0:
        raise InvalidValueError("Expected at least one image, but got an empty batch.")
    if ncols < 1:
        raise InvalidValueError(f"Expected ncols to be a positive integer, but got {ncols}.")
    return images.shape[0]


def _images_to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    images = images.detach().cpu()
    if images.dtype != torch.uint8:
        images = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).numpy()
