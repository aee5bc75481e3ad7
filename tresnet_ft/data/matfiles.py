"""Reading MATLAB ``.mat`` annotation files (Flowers-102, Stanford Cars) through SciPy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..fetch.packages import import_package


def load_mat(path: Path) -> dict[str, Any]:
    """Load a ``.mat`` file with singleton dimensions squeezed away.

    Raises:
        MissingPackageError: SciPy is not installed (the message gives the ``pip install``).
    """
    scipy_io = import_package("scipy.io", f"Reading {path.name}", pip_name="scipy")
    return scipy_io.loadmat(str(path), squeeze_me=True)
