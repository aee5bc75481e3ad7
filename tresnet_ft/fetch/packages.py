"""Packages that only one path needs (``onnx`` to write ONNX, ``onnxruntime`` to run it).

They are declared dependencies, so a normal install has them; this module is for the installs that
lost one (a hand-made environment, ``pip uninstall``, a platform without wheels). The error then
names the package and the ``pip install`` that fixes it, in one line.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import MissingPackageError


def import_package(module: str, needed_for: str, pip_name: str | None = None) -> ModuleType:
    """``import module``, or raise :class:`MissingPackageError` naming ``pip install pip_name``.

    Args:
        module: the import name, e.g. ``"onnx"``.
        needed_for: what the caller was doing, for the message (e.g. ``"ONNX export"``).
        pip_name: the distribution to install when it differs from ``module``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingPackageError(
            f"{needed_for} needs the {module} package, which is not installed. "
            f"Fix: pip install {pip_name or module}", name=module) from error
