"""Open a tresnet-ft checkpoint for inference: the norm-folded model and what it expects."""
from __future__ import annotations

from pathlib import Path

import torch

from ..classifier.checkpoint import LoadedClassifier, load_classifier
from ..models.fuse import fuse_for_inference
from ..models.hub_folder import is_hub_source
from ..errors import MissingInputError


def open_checkpoint(checkpoint: str | Path) -> LoadedClassifier:
    """:func:`load_classifier` on the CPU, with a missing file reported in inference terms.

    ``checkpoint`` is a ``.ckpt`` file, or a folder in timm's hub layout (``DIR``,
    ``local-dir:DIR``, ``hf-hub:ORG/NAME``) as ``tresnet-ft export --format hf`` writes it.

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
        UnsafeCheckpointError: the file needs arbitrary unpickling (a ``ValueError``).
        ValueError: the file is not a tresnet-ft classifier checkpoint.
    """
    if is_hub_source(checkpoint):
        return load_classifier(checkpoint, device="cpu")
    path = Path(checkpoint)
    if not path.is_file():
        # load_classifier's own message suggests published tags, which make no sense here.
        raise MissingInputError(
            f"Expected a tresnet-ft checkpoint file at {path}, but there is no such file. Fix: pass the .ckpt "
            "written by `tresnet-ft fit` (e.g. runs/<name>/checkpoints/best.ckpt), or a folder written by "
            "`tresnet-ft export --format hf`.")
    return load_classifier(path, device="cpu")


def load_fused_classifier(checkpoint: str | Path,
                          device: str | torch.device = "cpu") -> LoadedClassifier:
    """Load ``checkpoint`` and fold every norm into its conv (:func:`fuse_for_inference`).

    The returned model is eval-only, channels_last, without gradients, on ``device``; it maps
    ``float32 [B, 3, S, S]`` (the checkpoint's preprocessing, ``S = info.image_size``) to logits
    ``[B, K]``. Raises what :func:`open_checkpoint` raises.
    """
    loaded = open_checkpoint(checkpoint)
    return LoadedClassifier(fuse_for_inference(loaded.model).to(device), loaded.info)
