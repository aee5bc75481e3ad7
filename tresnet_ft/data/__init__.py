"""Datasets, transforms, batch mixing and the LightningDataModule.

Everything here is plain Python/NumPy/albumentations/torch except ``ImageDataModule``, which is
imported lazily so that ``from tresnet_ft.data import load_dataset`` does not import Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import DatasetInfo, DecodedImageDataset, ImageFileDataset, InMemoryImageDataset
from ..fetch.download import DatasetNotFoundError, default_data_root
from .hf import HFImageDataset
from .images import UnreadableImageError, decode_image, read_image
from .mixing import BatchMixer
from .quickstart import QuickstartDataset
from .quickstart_files import write_quickstart_folder, write_quickstart_table
from .registry import DATASETS, describe_dataset, load_dataset
from .preprocessing import EvalPreprocessing, images_to_float
from .transforms import TransformConfig, build_transforms

if TYPE_CHECKING:
    from .datamodule import ImageDataModule


def __getattr__(name: str) -> Any:
    if name == "ImageDataModule":
        from .datamodule import ImageDataModule

        return ImageDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATASETS",
    "BatchMixer",
    "DatasetInfo",
    "DatasetNotFoundError",
    "DecodedImageDataset",
    "EvalPreprocessing",
    "HFImageDataset",
    "ImageDataModule",
    "ImageFileDataset",
    "InMemoryImageDataset",
    "QuickstartDataset",
    "TransformConfig",
    "UnreadableImageError",
    "build_transforms",
    "decode_image",
    "default_data_root",
    "describe_dataset",
    "images_to_float",
    "load_dataset",
    "read_image",
    "write_quickstart_folder",
    "write_quickstart_table",
]
