"""tresnet-ft: fine-tune pretrained TResNet image classifiers."""
from .models import (ARCHS, PRETRAINED, TResNet, UnsafeCheckpointError, WeightsUnavailableError,
                     convert_sync_norm, create_model, fuse_for_inference, list_pretrained)

__version__ = "0.1.0"

__all__ = ["ARCHS", "PRETRAINED", "TResNet", "UnsafeCheckpointError", "WeightsUnavailableError",
           "convert_sync_norm", "create_model", "fuse_for_inference", "list_pretrained"]
