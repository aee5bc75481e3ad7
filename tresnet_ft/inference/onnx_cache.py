"""A checkpoint's ONNX export, made once and reused: what ``predict --runtime onnxruntime CKPT`` runs.

Entries are keyed by the checkpoint's content (SHA-256 of its bytes, not its path or time), the
tresnet-ft version (a new version may export differently) and the input dtype, so a retrained or
replaced checkpoint gets a fresh export and a copied one reuses its entry. Each entry is an
ordinary verified export (:func:`export_model`: written under a temporary name, checked against
PyTorch, renamed into place with its sidecar), so two processes filling the same entry at once
both leave a whole file, and a killed export leaves none.

Where: ``$TRESNET_FT_CACHE/onnx``, else ``$XDG_CACHE_HOME/tresnet-ft/onnx``, else
``~/.cache/tresnet-ft/onnx`` (next to the ``datasets`` and ``weights`` caches). Entries are a
model's size each (about 120 MB for TResNet-M); delete the folder to reclaim the space.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from ..models.hub_folder import is_hub_source, resolve_hub_folder
from ..models.weights import file_sha256
from ..version import __version__
from .export import export_model
from .loading import open_checkpoint
from .sidecar import sidecar_path

log = logging.getLogger(__name__)

CACHE_ENV = "TRESNET_FT_CACHE"
# What a hub folder's classifier is read from (the model card and plots do not change it).
HUB_MODEL_FILES = ("config.json", "model.safetensors", "tresnet_ft.json")
# uint8 in, scaled inside the graph: the batch crosses into ONNX Runtime at a quarter of the bytes,
# and the scaling fuses into the first convolution's input (benchmarks/bench_runtime.py).
CACHED_INPUT_DTYPE = "uint8"


def onnx_cache_folder() -> Path:
    """``$TRESNET_FT_CACHE/onnx``, ``$XDG_CACHE_HOME/tresnet-ft/onnx`` or ``~/.cache/tresnet-ft/onnx``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "onnx"
    base = Path(os.environ["XDG_CACHE_HOME"]) if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "tresnet-ft" / "onnx"


def folder_digest(folder: Path) -> str:
    """SHA-256 over the names and digests of the files a hub folder's model is built from."""
    digest = hashlib.sha256()
    for name in HUB_MODEL_FILES:
        if (folder / name).is_file():
            digest.update(f"{name}:{file_sha256(folder / name)}\n".encode())
    return digest.hexdigest()


def cached_onnx(checkpoint: str | Path, input_dtype: str = CACHED_INPUT_DTYPE) -> Path:
    """The ONNX export of ``checkpoint`` (a checkpoint file, or a hub folder or id; with its sidecar) from the cache, exported there first if needed.

    Raises what :func:`export_model` raises (a missing or foreign checkpoint, a full disk, ...).
    """
    if is_hub_source(checkpoint):  # a hub folder or id: its files are the content
        checkpoint = resolve_hub_folder(checkpoint)
        digest = folder_digest(checkpoint)
    else:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():  # open_checkpoint words it; hashing would raise a bare OSError
            open_checkpoint(checkpoint)
        digest = file_sha256(checkpoint)
    key = f"{digest[:32]}-v{__version__}-{input_dtype}"
    path = onnx_cache_folder() / f"{key}.onnx"
    if path.is_file() and sidecar_path(path).is_file():
        log.info("Using the cached ONNX export of %s: %s", checkpoint.name, path)
        return path
    log.info("Exporting %s to ONNX once (cached for later runs in %s)", checkpoint.name, path.parent)
    return export_model(checkpoint, "onnx", path, input_dtype=input_dtype).path
