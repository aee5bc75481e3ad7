"""Reading MATLAB ``.mat`` annotation files (Flowers-102, Stanford Cars) through SciPy."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_mat(path: Path) -> dict[str, Any]:
    """Load a ``.mat`` file with singleton dimensions squeezed away.

    Raises:
        ModuleNotFoundError: SciPy is not installed (the message says how to install it).
    """
    try:
        from scipy.io import loadmat
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"Reading {path.name} needs SciPy, which is not installed. Fix: pip install scipy"
        ) from error
    return loadmat(str(path), squeeze_me=True)
