"""The TResNet family: architecture, norm layers, pretrained weights, inference fusion."""
from .factory import create_model, load_pretrained
from .fuse import fuse_for_inference
from .norm_act import BatchNormAct2d, InPlaceABN, convert_sync_norm, refresh_invertibility
from .tresnet import ARCHS, TResNet
from .weights import PRETRAINED, UnsafeCheckpointError, WeightsUnavailableError, list_pretrained

__all__ = ["ARCHS", "PRETRAINED", "BatchNormAct2d", "InPlaceABN", "TResNet", "UnsafeCheckpointError",
           "WeightsUnavailableError", "convert_sync_norm", "create_model", "fuse_for_inference",
           "list_pretrained", "load_pretrained", "refresh_invertibility"]
