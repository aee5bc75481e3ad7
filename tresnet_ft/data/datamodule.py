"""The LightningDataModule: datasets by name, transforms, loaders, and device-side batch work.

The only Lightning code in ``tresnet_ft.data``. Loaders carry ``uint8 [B, 3, S, S]`` images (4x
fewer bytes through worker queues and pinned memory than float32); ``on_after_batch_transfer``
turns them into normalised float32 on the device and applies mixup/cutmix to training batches.
"""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
import weakref
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from .base import DatasetInfo, DecodedImageDataset, Task, check_split
from .mixing import BatchMixer
from .registry import check_options, describe_dataset, get_entry, prepare_dataset, resolve_root
from .preprocessing import EvalCrop, EvalPreprocessing
from .transforms import TrainCrop, TransformConfig, build_transforms
from .images import ImageLimits
from .unreadable import UnreadableLog, resolve_max_unreadable_share
from .workers import default_num_workers, single_threaded_opencv
from ..errors import InvalidValueError

log = logging.getLogger(__name__)


def _remove_file(path: str) -> None:
    Path(path).unlink(missing_ok=True)


def _check_arguments(dataset: str, batch_size: int, num_workers: int | None, val_fraction: float | None,
                     predict_split: str, mix_settings: dict[str, float]) -> None:
    """Fail at construction on what no loader could use (the dataset's own options come later)."""
    get_entry(dataset)  # an unknown name raises, listing the known ones
    if batch_size < 1:
        raise InvalidValueError(f"Expected batch_size to be a positive integer, but got {batch_size}.")
    if num_workers is not None and num_workers < 0:
        raise InvalidValueError(f"Expected num_workers to be None (automatic) or >= 0, but got {num_workers}.")
    if val_fraction is not None and not 0.0 <= val_fraction < 1.0:
        raise InvalidValueError(f"Expected val_fraction in [0, 1) (the share of training images held out), but got "
                                f"{val_fraction}. Fix: --data.val_fraction 0.1.")
    check_split(predict_split)
    BatchMixer(1, **mix_settings)  # the mixer owns the rules for its settings; checked now, not at the first batch


class TransformedDataset(Dataset):
    """A dataset whose images go through ``transform``; items ``(tensor [3, S, S], target)``."""

    def __init__(self, dataset: Dataset, transform: Any) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        image, target = self.dataset[index]
        return self.transform(image), target


class ImageDataModule(pl.LightningDataModule):
    """Loaders for any registered dataset, with TResNet's preprocessing.

    Args:
        dataset: a registered name (``cifar10``, ``cifar100``, ``flowers102``, ``stanford_cars``,
            ``folder``, ``csv``, ``jsonl``, ``hf``, ``quickstart``, ``quickstart_multilabel``).
        root: data root for named datasets (default ``$TRESNET_FT_DATA`` or
            ``~/.cache/tresnet-ft/datasets``); your folder or CSV/JSONL file for the others; for
            ``hf`` a hub id, a save_to_disk folder, Parquet/Arrow file(s) or an imagefolder.
        image_size: training and evaluation resolution ``S`` (a multiple of 4, at least 32: 224, 368, 448, ...).
        batch_size: images per batch.
        num_workers: loader processes per training process; None divides this machine's cores
            among its training processes (one per device), minus one each for the training
            loop, 1..8 each (:func:`~tresnet_ft.data.workers.workers_per_process`).
        dataset_options: passed to the dataset loader (e.g. ``{"num_images": 200}``; for ``hf``
            ``{"image_column": "img", "label_column": "fine_label", "val_split": "test"}``).
        val_fraction: holdout share for ``val`` where the dataset supports one; None keeps the
            dataset's default (CIFAR/Cars: the official test set; folder/CSV: 0.1).
        seed: holdout seed.
        train_crop, crop_scale, hflip, randaugment_ops, randaugment_magnitude, cutout,
            cutout_size: see :class:`~tresnet_ft.data.transforms.TransformConfig`.
        eval_crop: ``squish`` or ``center_crop``; with ``image_size``, ``mean`` and ``std`` it makes
            :attr:`preprocessing` (:class:`~tresnet_ft.data.preprocessing.EvalPreprocessing`).
        mean, std: per-backbone normalisation in [0, 1] units (TResNet: 0 and 1, i.e. none).
        mixup_alpha, cutmix_alpha, mix_prob, mix_switch_prob: batch mixing for single-label
            training (off by default); targets become ``[B, K]`` probabilities when on.
        pin_memory: None pins when training on a GPU.
        persistent_workers: keep workers alive between epochs.
        download: fetch missing published files in ``prepare_data``.
        predict_split: the split ``predict_dataloader`` serves.
        max_image_pixels, max_image_bytes: an image whose header declares more pixels, or a file
            of more bytes, is unreadable (skipped and reported), so that no file can take a
            worker's memory; None: ``$TRESNET_FT_MAX_IMAGE_PIXELS`` / ``$TRESNET_FT_MAX_IMAGE_BYTES``,
            else 178,956,970 pixels (where Pillow refuses a decompression bomb) and 1 GiB (:class:`~tresnet_ft.data.images.ImageLimits`).
        max_unreadable_share: stop when more than this share of the images a loader process reads
            are unreadable (judged after 256); None: ``$TRESNET_FT_MAX_UNREADABLE_SHARE``, else 0.5.
    """

    def __init__(
        self,
        dataset: str = "quickstart",
        root: str | None = None,
        image_size: int = 224,
        batch_size: int = 64,
        num_workers: int | None = None,
        dataset_options: dict[str, Any] | None = None,
        val_fraction: float | None = None,
        seed: int = 0,
        train_crop: TrainCrop = "random_resized_crop",
        crop_scale: tuple[float, float] = (0.25, 1.0),
        hflip: float = 0.5,
        randaugment_ops: int = 2,
        randaugment_magnitude: float = 9,
        cutout: float = 0.5,
        cutout_size: float = 0.5,
        eval_crop: EvalCrop = "squish",
        mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
        std: tuple[float, float, float] = (1.0, 1.0, 1.0),
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        mix_switch_prob: float = 0.5,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        download: bool = True,
        predict_split: str = "test",
        max_image_pixels: int | None = None,
        max_image_bytes: int | None = None,
        max_unreadable_share: float | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.mix_settings = dict(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=mix_prob, switch_prob=mix_switch_prob)
        _check_arguments(dataset, batch_size, num_workers, val_fraction, predict_split, self.mix_settings)
        # Read once, here: a bad environment variable fails before anything loads.
        self.image_limits = ImageLimits.resolve(max_image_pixels, max_image_bytes)
        self.max_unreadable_share = resolve_max_unreadable_share(max_unreadable_share)
        self.dataset_name, self.root, self.batch_size = dataset, root, batch_size
        self._num_workers = num_workers
        self.options = self._dataset_options(dataset_options, val_fraction, seed)
        preprocessing = EvalPreprocessing(image_size=image_size, eval_crop=eval_crop, mean=tuple(mean), std=tuple(std))
        self.transform_config = TransformConfig(
            preprocessing=preprocessing,
            train_crop=train_crop,
            crop_scale=tuple(crop_scale),
            hflip=hflip,
            randaugment_ops=randaugment_ops,
            randaugment_magnitude=randaugment_magnitude,
            cutout=cutout,
            cutout_size=cutout_size,
        )
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers
        self.download, self.predict_split = download, predict_split
        self.datasets: dict[str, Dataset] = {}
        self._info: DatasetInfo | None = None
        self._mixer: BatchMixer | None = None
        self._unreadable_file: str | None = None

    @property
    def num_workers(self) -> int:
        """Loader workers per process: as given, or this process's share of the machine's cores."""
        if self._num_workers is not None:
            return self._num_workers
        trainer = self.trainer
        return default_num_workers(trainer.num_devices if trainer is not None else 1)

    # -- what the model needs to know before it is built -------------------------------------

    @property
    def preprocessing(self) -> EvalPreprocessing:
        """How evaluation images are prepared; the model keeps it and its checkpoints store it."""
        return self.transform_config.preprocessing

    @property
    def info(self) -> DatasetInfo:
        """Task and classes, computed cheaply on first use (no image is decoded)."""
        if self._info is None:
            self._info = describe_dataset(self.dataset_name, self.root, **self.options)
        return self._info

    @property
    def task(self) -> Task:
        return self.info.task

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def classes(self) -> list[str]:
        return list(self.info.classes)

    @property
    def mixer(self) -> BatchMixer | None:
        """The batch mixer for training, or None when mixing is off."""
        if self._mixer is None:
            mixer = BatchMixer(self.num_classes, **self.mix_settings)
            if mixer.enabled and self.task != "single_label":
                raise InvalidValueError(
                    f"Expected mixup/cutmix only for single-label data, but {self.dataset_name!r} is "
                    f"{self.task}. Fix: set mixup_alpha and cutmix_alpha to 0."
                )
            self._mixer = mixer
        return self._mixer if self._mixer.enabled else None

    # -- Lightning hooks ----------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Download/extract on one process (Lightning calls this on rank 0 only)."""
        prepare_dataset(self.dataset_name, self.root, self.download, True, **self.options)

    def setup(self, stage: str | None = None) -> None:
        """Load the splits ``stage`` needs and attach the transforms."""
        splits = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": (self.predict_split,),
        }
        wanted = splits.get(stage or "fit", ("train", "val"))
        if self._unreadable_file is None:
            handle, self._unreadable_file = tempfile.mkstemp(
                prefix="tresnet-ft-unreadable-", suffix=".log"
            )
            os.close(handle)
            # Lives as long as this DataModule: datasets built here keep writing to it.
            weakref.finalize(self, _remove_file, self._unreadable_file)
        for split in wanted:
            if split not in self.datasets:
                self.datasets[split] = TransformedDataset(self._load(split), self._transform(split))

    def teardown(self, stage: str | None = None) -> None:
        """Report images skipped while loading (once, with a count and the first paths)."""
        if self._unreadable_file is None:
            return
        summary = UnreadableLog(self._unreadable_file).summary()
        if summary:
            log.warning("%s: %s", self.dataset_name, summary)
        Path(self._unreadable_file).write_text("")  # the next stage reports only its own skips

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split, shuffle=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """On the device: uint8 → normalised float32, then mixup/cutmix for training batches."""
        images, targets = batch
        images = self.preprocessing.to_float(images)
        trainer = self.trainer
        if trainer is not None and trainer.training and self.mixer is not None:
            images, targets = self.mixer(images, targets)
        return images, targets

    # -- helpers ------------------------------------------------------------------------------

    def _dataset_options(
        self, options: dict[str, Any] | None, val_fraction: float | None, seed: int
    ) -> dict[str, Any]:
        options = dict(options or {})
        accepted = inspect.signature(get_entry(self.dataset_name).load).parameters
        if val_fraction is not None:
            if "val_fraction" not in accepted:
                raise InvalidValueError(
                    f"Dataset {self.dataset_name!r} has fixed splits: expected val_fraction=None, but got {val_fraction}."
                )
            options.setdefault("val_fraction", val_fraction)
        if "seed" in accepted:
            options.setdefault("seed", seed)
        check_options(self.dataset_name, get_entry(self.dataset_name).load, options)
        return options

    def _load(self, split: str) -> Dataset:
        entry = get_entry(self.dataset_name)
        dataset = entry.load(resolve_root(self.dataset_name, self.root), split, **self.options)
        if tuple(dataset.classes) != self.info.classes:
            raise InvalidValueError(
                f"{self.dataset_name}/{split}: expected the classes the model was built for "
                f"({self.num_classes}), but the loaded split has {len(dataset.classes)} different ones."
            )
        if len(dataset) == 0:  # e.g. every held-out image unreadable: no metric, no best checkpoint
            raise InvalidValueError(
                f"{self.dataset_name}/{split} has no readable image under {self.root}, so there is nothing to "
                f"{'train on' if split == 'train' else 'evaluate'}. Fix: add readable images to that split "
                "(the unreadable ones are listed above), or give a larger val_fraction.")
        if isinstance(dataset, DecodedImageDataset):  # image files and Hugging Face tables
            # Decode JPEGs at reduced scale as long as they stay at least as large as the output.
            dataset.min_decode_size = self._min_decode_size(split)
            dataset.limits, dataset.max_unreadable_share = self.image_limits, self.max_unreadable_share
            dataset.unreadable = UnreadableLog(self._unreadable_file)
        return dataset

    def _min_decode_size(self, split: str) -> int:
        # The random train crop may take any part of the image at S: it needs S pixels per side.
        return self.preprocessing.image_size if split == "train" else self.preprocessing.decode_size

    def _transform(self, split: str) -> Any:
        return build_transforms(self.transform_config, train=split == "train", output="uint8")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}.get(split, "predict"))
        dataset = self.datasets[split]
        workers = self.num_workers
        if workers > 0:
            single_threaded_opencv()
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            pin_memory=self._pin_memory(),
            persistent_workers=self.persistent_workers and workers > 0,
            drop_last=shuffle and len(dataset) > self.batch_size,  # type: ignore[arg-type]
        )

    def _pin_memory(self) -> bool:
        if self.pin_memory is not None:
            return self.pin_memory
        trainer = self.trainer
        on_gpu = (
            trainer is not None and getattr(trainer.strategy.root_device, "type", "cpu") == "cuda"
        )
        return on_gpu or (trainer is None and torch.cuda.is_available())
