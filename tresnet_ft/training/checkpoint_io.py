"""How training checkpoints reach the disk and come back: atomically, and without running code.

Lightning's own ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file
lives in the system temp folder. When that folder is on another filesystem than the run folder
(a tmpfs ``/tmp``, a container volume), the final step is a copy, not a rename: a process killed
during the copy leaves a truncated ``last.ckpt``, and the temporary file (hundreds of MB) stays
in ``/tmp``. :class:`SafeCheckpointIO` writes next to the target instead and renames.

Reading uses ``torch.load(weights_only=True)`` whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says,
so ``--ckpt_path`` never unpickles arbitrary objects.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..models.weights import read_checkpoint
from ..errors import InvalidValueError, MissingInputError
from ..outputs import atomic_output, partial_path

# What a checkpoint path may be; our own alias, as Lightning's (``_PATH``) is private.
CheckpointPath = str | os.PathLike

LIGHTNING_VERSION_KEY = (
    "pytorch-lightning_version"  # in every checkpoint Lightning writes
)


# What to do when the disk fills up mid-save (the save itself left every earlier file as it was).
CHECKPOINT_DISK_FULL_FIX = (
    "free space on that disk and run again (checkpoints saved before are intact; --ckpt_path last "
    "resumes from the newest last.ckpt), or put the runs on a disk with room with "
    "--trainer.default_root_dir DIR"
)


def save_atomically(checkpoint: dict[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` to a hidden ``.<name>.partial`` in ``path``'s folder, flush it to disk, then
    rename it over ``path`` (:func:`tresnet_ft.outputs.atomic_output`).

    ``os.replace`` is atomic within a filesystem: readers see the old file or the new one, never
    a mix. A crash before the rename leaves the old file intact and a stale ``.partial``, which
    the next save of the same path overwrites; an exception removes the ``.partial`` at once.

    Raises:
        DiskFullError: the disk or quota filled up (one line: the file, the free space, the fix).
    """
    path = Path(path)
    with atomic_output(path, example_name="last.ckpt", disk_full_fix=CHECKPOINT_DISK_FULL_FIX) as partial:
        with open(partial, "wb") as handle:
            torch.save(checkpoint, handle)
    return path


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO for local files: atomic writes (:func:`save_atomically`) and reads
    that refuse pickled objects beyond tensors and plain values.

    The ``tresnet-ft`` command and :func:`tresnet_ft.fit` install it. With your own Trainer:
    ``pl.Trainer(plugins=[SafeCheckpointIO()])``. Remote paths (``s3://`` ...) go to Lightning's
    own implementation.
    """

    def save_checkpoint(
        self,
        checkpoint: dict[str, Any],
        path: CheckpointPath,
        storage_options: Any | None = None,
    ) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        save_atomically(checkpoint, path)

    def load_checkpoint(
        self,
        path: CheckpointPath,
        map_location: Callable | None = None,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Read ``path`` with ``weights_only=True``.

        Raises:
            FileNotFoundError: no such file (the message says where checkpoints are written).
            UnsafeCheckpointError: the file holds pickled objects beyond tensors and plain values.
        """
        if "://" in str(path):
            return super().load_checkpoint(
                path, map_location=map_location, weights_only=True
            )
        if not Path(path).is_file():
            raise MissingInputError(
                f"Checkpoint {path} does not exist. Fix: pass a file written by `tresnet-ft fit` "
                "(runs/<recipe>/version_<N>/checkpoints/last.ckpt or best.ckpt), or --ckpt_path last "
                "to continue the latest run of the recipe."
            )
        checkpoint = dict(read_checkpoint(path))
        if LIGHTNING_VERSION_KEY not in checkpoint:
            raise InvalidValueError(
                f"{path} is not a training checkpoint: it has no training state (keys {sorted(checkpoint)[:6]}). "
                f"Fix: to start from its weights, pass --model.pretrained {path} instead; --ckpt_path takes "
                "the last.ckpt or best.ckpt that `tresnet-ft fit` writes."
            )
        return checkpoint


__all__ = ["SafeCheckpointIO", "partial_path", "save_atomically"]
