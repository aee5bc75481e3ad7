"""Figure output: a PNG file, or the RGB pixels that loggers such as Weights & Biases take.

Both attach the Agg canvas to the figure itself, so neither changes pyplot's global backend.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ...errors import InvalidValueError


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parent folders are created) and return the path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InvalidValueError(f"Expected a path ending in .png, but got {str(path)!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # attaches the Agg canvas, whatever backend pyplot uses
    fig.savefig(path, dpi=dpi, format="png")
    return path


def figure_to_array(fig: Figure, dpi: int = 100) -> np.ndarray:
    """Render ``fig`` to RGB pixels: ``[H, W, 3]`` uint8."""
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
