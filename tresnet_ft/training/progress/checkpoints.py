"""The checkpoints a fit kept: the best one's callback, its epoch, and ``last.ckpt``."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

# The package's one logger name, as before the split: users and tests filter on it.
log = logging.getLogger(__package__)


def best_checkpoint_callback(trainer: pl.Trainer) -> ModelCheckpoint | None:
    """The first checkpoint callback that keeps the best value of a monitored metric."""
    return next((cb for cb in trainer.checkpoint_callbacks
                 if isinstance(cb, ModelCheckpoint) and cb.monitor), None)


def saved_epoch(path: str | os.PathLike) -> int | None:
    """The ``epoch`` a Lightning checkpoint was saved in, or None if the file cannot tell.

    Memory-mapped: only the small pickle is read, not the weights.
    """
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:  # noqa: BLE001 (unreadable, remote or not Lightning's: the summary goes without)
        log.debug("Could not read the epoch of %s.", path, exc_info=True)
        return None


def last_checkpoint(trainer: pl.Trainer) -> Path | None:
    """The ``last.ckpt`` in a checkpoint callback's folder, if one was saved."""
    name = ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION
    for callback in trainer.checkpoint_callbacks:
        folder = getattr(callback, "dirpath", None)
        if folder and (Path(folder) / name).is_file():
            return Path(folder) / name
    return None
