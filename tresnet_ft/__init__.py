"""tresnet-ft: fine-tune pretrained TResNet image classifiers.

``create_model`` and the rest of the model API import without Lightning; ``ImageDataModule``,
``TResNetClassifier`` and ``fit`` load it on first use.
"""
import os
from typing import Any

# albumentations asks PyPI for a newer version when imported (a 2 s wait on an offline machine);
# users who want that check can still set the variable to 0.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from .models import (ARCHS, PRETRAINED, TResNet, UnsafeCheckpointError, WeightsUnavailableError,
                     convert_sync_norm, create_model, fuse_for_inference, list_pretrained)

from .version import __version__

_LAZY = {"ImageDataModule": ".data", "TResNetClassifier": ".training.module", "fit": ".cli.api",
         "load_classifier": ".classifier.checkpoint", "predict_to_file": ".inference.predict",
         "export_model": ".inference.export", "export_hub_folder": ".inference.hub_export",
         "push_to_hub": ".inference.hub_push", "open_runtime": ".inference.runtime",
         "quantize_model": ".inference.quantize"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'tresnet_ft' has no attribute {name!r}")


__all__ = ["__version__", "ARCHS", "PRETRAINED", "ImageDataModule", "TResNet", "TResNetClassifier", "UnsafeCheckpointError",
           "WeightsUnavailableError", "convert_sync_norm", "create_model", "export_hub_folder", "export_model", "fit",
           "fuse_for_inference", "list_pretrained", "load_classifier", "open_runtime", "predict_to_file",
           "push_to_hub", "quantize_model"]
