"""One interface over the ways a trained classifier can run: PyTorch (the norm-folded model) and
ONNX Runtime (:mod:`.onnx_runtime`). ``predict`` and ``serve`` take a :class:`Runtime` and never
ask which one they hold.

Which runtime ``"auto"`` picks (figures in docs/PERFORMANCE.md, ``benchmarks/bench_runtime.py``):

* an ``.onnx`` file (with its sidecar): ONNX Runtime, the only one that reads it;
* a checkpoint on a CUDA device (``device`` cuda, or None with CUDA available): PyTorch;
* a checkpoint on the CPU: :func:`cpu_checkpoint_runtime`, by batch size (its comment gives the figures).
  ``--runtime onnxruntime`` runs the checkpoint's ONNX export instead, made once and cached
  (:func:`.onnx_cache.cached_onnx`).

Example:
    >>> runtime = open_runtime("runs/flowers/checkpoints/best.ckpt")     # doctest: +SKIP
    >>> runtime.logits(torch.zeros(2, 3, 224, 224, dtype=torch.uint8)).shape  # doctest: +SKIP
    torch.Size([2, 102])
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from ..classifier.checkpoint import ClassifierInfo
from ..errors import InvalidValueError
from .loading import load_fused_classifier
from .stream import FloatInput

RUNTIMES = ("auto", "torch", "onnxruntime")
ONNX_SUFFIX = ".onnx"
# What "auto" runs a checkpoint in on the CPU depends on the batch (docs/PERFORMANCE.md, "CPU
# runtimes", 2-core EPYC): at batch 1 the fp32 ONNX export is 1.33x the fused PyTorch model, at
# batch 8 1.03x, at batch 16 the same (both spend ~91 % in convolutions). So small batches (serve,
# whose batches are what is waiting, 8 at most) run in ONNX Runtime, worth its one-off export
# (~10 s, cached); predict's batches of 32 run in PyTorch, where exporting first buys nothing.
# int8 (`export --int8`) is 3.4-3.9x either.
ONNX_RUNTIME_MAX_BATCH = 8


def cpu_checkpoint_runtime(max_batch_size: int) -> str:
    """The runtime ``"auto"`` picks for a checkpoint on the CPU, for batches of up to ``max_batch_size``."""
    return "onnxruntime" if max_batch_size <= ONNX_RUNTIME_MAX_BATCH else "torch"


class Runtime(Protocol):
    """A loaded classifier that maps a batch of eval-resized ``uint8`` images to logits."""

    info: ClassifierInfo  # classes, task, preprocessing, thresholds
    name: str  # "torch" or "onnxruntime"
    device: torch.device  # where the uint8 batch should be before :meth:`logits`

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8 [B, 3, S, S]`` (RGB, the eval transform's output) → ``float32 [B, K]`` on the CPU."""
        ...


class TorchRuntime:
    """The checkpoint's norm-folded PyTorch model (:func:`load_fused_classifier`)."""

    name = "torch"

    def __init__(self, checkpoint: str | Path, device: str | torch.device | None = None,
                 max_batch_size: int = 32) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        classifier = load_fused_classifier(checkpoint, self.device)
        self.model, self.info = classifier.model, classifier.info
        self._to_float = FloatInput(max_batch_size, self.info.preprocessing, self.device)
        self._max_batch_size = max_batch_size

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        if len(images) > self._max_batch_size:  # the float buffer is sized once, at the largest batch
            self._to_float = FloatInput(len(images), self.info.preprocessing, self.device)
            self._max_batch_size = len(images)
        with torch.inference_mode():
            return self.model(self._to_float(images.to(self.device, non_blocking=True))).float().cpu()


def open_runtime(source: str | Path, runtime: str = "auto", device: str | torch.device | None = None,
                 max_batch_size: int = 32) -> Runtime:
    """Load ``source`` (a tresnet-ft checkpoint, or an ``.onnx`` exported with its sidecar) in
    ``runtime``: ``"torch"``, ``"onnxruntime"`` (CPU), or ``"auto"`` (the module doc says which).

    Raises:
        InvalidValueError: an unknown ``runtime``, or one that cannot run ``source`` on ``device``;
            whatever :func:`load_fused_classifier` or :class:`OnnxRuntime` raise.
    """
    if runtime not in RUNTIMES:
        raise InvalidValueError(f"Expected runtime to be one of {list(RUNTIMES)}, but got {runtime!r}. "
                                "Fix: --runtime auto, torch or onnxruntime.")
    is_onnx = Path(source).suffix.lower() == ONNX_SUFFIX
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    chosen = runtime if runtime != "auto" else ("onnxruntime" if is_onnx else "torch" if on_cuda
                                                else cpu_checkpoint_runtime(max_batch_size))
    if chosen == "torch" and is_onnx:
        raise InvalidValueError(f"{source} is an ONNX model, which runs in ONNX Runtime, not PyTorch. "
                                "Fix: --runtime onnxruntime (or auto), or pass the training checkpoint.")
    if chosen == "torch":
        return TorchRuntime(source, device, max_batch_size)
    if device is not None and torch.device(device).type != "cpu":
        raise InvalidValueError(f"The onnxruntime runtime runs on the CPU, but device {device} was asked for. "
                                "Fix: --runtime torch for a GPU, or leave the device to the CPU.")
    from .onnx_runtime import OnnxRuntime  # onnxruntime loads only when it is used

    if is_onnx:
        return OnnxRuntime(source)
    from .onnx_cache import cached_onnx

    return OnnxRuntime(cached_onnx(source))
