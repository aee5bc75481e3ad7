"""The command line on top: ``tresnet-ft`` (:func:`main`), recipes, and ``tresnet_ft.fit`` for notebooks."""
from .command import main

__all__ = ["main"]
