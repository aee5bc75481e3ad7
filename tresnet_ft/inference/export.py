"""Export a trained classifier to ONNX or TorchScript, check it, and describe it in a sidecar JSON.

The exported graph is the norm-folded model (:func:`tresnet_ft.fuse_for_inference`):

* input ``images``: ``float32 [B, 3, S, S]``, RGB, preprocessed the checkpoint's way,
  ``(pixels / 255 - mean) / std`` (TResNet: ``pixels / 255``), after the eval resize to ``S x S``;
  with ``input_dtype="uint8"`` the input is raw ``uint8`` pixels and the graph scales them itself;
* output ``logits``: ``float32 [B, K]``; apply softmax (single-label) or sigmoid (multi-label);
* the batch axis ``B`` is dynamic; ``S`` is fixed at the checkpoint's ``image_size``.

ONNX goes through PyTorch's TorchScript-based exporter (``dynamo=False``), which needs the ``onnx``
package (a dependency; without it the error names the ``pip install``); the newer
``torch.export``-based exporter would also need ``onnxscript``, which is not a dependency. The check
runs the file with ``onnxruntime`` (also a dependency; without it the export is kept unverified,
with a warning that names the ``pip install``).
TorchScript is a trace (``torch.jit.trace``), loadable with ``torch.jit.load`` without this package.

The file is written next to ``output`` under a temporary name (:func:`tresnet_ft.outputs.atomic_output`),
run on a sample batch and compared with the checkpoint's own (unfused) PyTorch model, and only then
renamed to ``output``: a failed check, an error or a killed export never leaves a file that looks like
a finished export, and a previous export stays as it was. ``<output>.json`` (the sidecar) holds
classes, task, image size, resize rule, mean/std and thresholds as plain JSON; it is written the
same way, just before the model is renamed into place. Neither output may be a folder, a device or
the checkpoint itself.
"""
from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..classifier.checkpoint import ClassifierInfo
from .exportable import INPUT_DTYPES, exportable_model, sample_batch
from .loading import open_checkpoint
from ..fetch.packages import import_package
from .sidecar import check_sidecar, sidecar_metadata, write_sidecar
from ..models.fuse import fuse_for_inference
from ..errors import InvalidValueError
from ..outputs import atomic_output, check_output

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")


class ExportCheckError(RuntimeError):
    """The exported model's outputs differ from PyTorch's by more than the tolerance."""


@dataclass
class ExportReport:
    """What :func:`export_model` wrote and how well the export matches PyTorch.

    Attributes:
        format: ``"onnx"`` or ``"torchscript"``.
        path: the exported model file.
        sidecar: the JSON next to it (classes, task, preprocessing, thresholds).
        input_dtype: ``"float32"`` (preprocessed input) or ``"uint8"`` (raw pixels).
        image_size: ``S`` of the input ``[B, 3, S, S]``.
        opset: the ONNX opset (None for TorchScript).
        checked_with: ``"onnxruntime"``, ``"torch.jit.load"``, or None when not run (``check=False``,
            or ONNX without onnxruntime installed).
        checked_batch_sizes: the batch sizes the outputs were compared at.
        max_abs_diff: largest absolute logit difference from the unfused PyTorch model (None: not run).
        seconds: wall time of the export and the check.
        unchecked_because: why the check did not run (None when it ran).

    ``str(report)`` says the same in sentences: what was written where, and the check's result.
    """

    format: str
    path: Path
    sidecar: Path
    input_dtype: str
    image_size: int
    opset: int | None
    checked_with: str | None
    checked_batch_sizes: tuple[int, ...]
    max_abs_diff: float | None
    seconds: float
    unchecked_because: str | None = None

    def __str__(self) -> str:
        kind = f"ONNX opset {self.opset}" if self.format == "onnx" else "TorchScript"
        size = self.image_size
        wrote = (f"Wrote {self.path} ({kind}; input 'images' {self.input_dtype} [B, 3, {size}, {size}], "
                 f"output 'logits') and {self.sidecar.name} (classes, preprocessing, "
                 f"thresholds) in {self.seconds:.1f} s.")
        if self.checked_with is None:
            return f"{wrote} Not verified: {self.unchecked_because}."
        sizes = " and ".join(str(size) for size in self.checked_batch_sizes)
        return (f"{wrote} Verified with {self.checked_with}: the same logits as PyTorch at batch sizes "
                f"{sizes} (max abs difference {self.max_abs_diff:.1e}).")


def export_model(checkpoint: str | Path, format: str, output: Path, opset: int = 17, check: bool = True,
                 batch_size_check: int = 2, input_dtype: str = "float32", tolerance: float = 1e-3) -> ExportReport:
    """Export ``checkpoint`` to ``output`` as ONNX or TorchScript (see the module doc for the I/O).

    Args:
        checkpoint: a tresnet-ft classifier checkpoint.
        format: ``"onnx"`` or ``"torchscript"``.
        output: the file to write (e.g. ``model.onnx``, ``model.pt``); ``<output>.json`` goes next to it.
        opset: ONNX opset version (ignored for TorchScript).
        check: run the exported file on sample batches of ``batch_size_check`` and
            ``batch_size_check + 1`` images (the second proves the batch axis is dynamic) and
            compare its logits with the unfused PyTorch model's.
        batch_size_check: batch size of the trace example and the first check.
        input_dtype: ``"float32"`` (preprocessed input) or ``"uint8"`` (raw pixels, scaled in the graph).
        tolerance: allowed ``max |logits - reference|``, relative to ``max(1, max |reference|)``.

    Raises:
        ValueError: unknown format or input_dtype, a bad batch size, or not a tresnet-ft checkpoint;
            ``output`` or its sidecar is a folder, a device, a FIFO or a socket, or the checkpoint.
        FileNotFoundError: the checkpoint does not exist.
        ExportCheckError: the check found larger differences than ``tolerance`` (nothing is written).
        DiskFullError: the disk filled up while writing (previous files are kept as they were).
    """
    _check_options(format, batch_size_check, input_dtype)
    output, started = Path(output), time.perf_counter()
    # Both outputs are checked before anything slow: neither may be a folder, a device or the checkpoint.
    check_output(output, [checkpoint], example_name=_example_name(format))
    check_sidecar(output, [checkpoint])
    if format == "onnx":  # before the checkpoint loads: a missing package fails fast
        import_package("onnx", "ONNX export")
    loaded = open_checkpoint(checkpoint)
    info = loaded.info
    model = exportable_model(fuse_for_inference(loaded.model), info, input_dtype)
    opset_used = opset if format == "onnx" else None
    with atomic_output(output, [checkpoint], example_name=_example_name(format)) as partial:
        _write(format, model, sample_batch(info, batch_size_check, input_dtype), partial, opset)
        checked_with, sizes, diff, unchecked = None, (), None, "the check was turned off (check=False)"
        if check:
            reference = exportable_model(loaded.model, info, input_dtype)  # unfused: what training made
            checked_with, sizes, diff = _check_export(format, partial, reference, info, batch_size_check,
                                                      input_dtype, tolerance)
            unchecked = None if checked_with else "onnxruntime is not installed (pip install onnxruntime)"
        # Written (atomically) before the model is renamed into place, so a new model never
        # appears without its sidecar; a kill between the two renames leaves the new sidecar next
        # to the previous model (or to none).
        sidecar = write_sidecar(output, sidecar_metadata(info, output.name, format, input_dtype, opset_used, diff),
                                inputs=[checkpoint])
    report = ExportReport(format, output, sidecar, input_dtype, info.image_size, opset_used, checked_with,
                          sizes, diff, time.perf_counter() - started, unchecked)
    log.info("%s", report)
    return report


def _example_name(format: str) -> str:
    return "model.onnx" if format == "onnx" else "model.pt"


def _check_options(format: str, batch_size_check: int, input_dtype: str) -> None:
    if format not in FORMATS:
        raise InvalidValueError(f"Expected format to be one of {list(FORMATS)}, but got {format!r}. "
                         "Fix: --format onnx or --format torchscript.")
    if input_dtype not in INPUT_DTYPES:
        raise InvalidValueError(f"Expected input_dtype to be one of {list(INPUT_DTYPES)}, but got {input_dtype!r}.")
    if isinstance(batch_size_check, bool) or not isinstance(batch_size_check, int) or batch_size_check < 1:
        raise InvalidValueError(f"Expected batch_size_check to be an integer of at least 1, but got {batch_size_check!r}.")


@contextlib.contextmanager
def _known_exporter_warnings_silenced() -> Iterator[None]:
    """Silence the warnings every export raises, each one known and accepted (see the comments)."""
    with warnings.catch_warnings():
        # The forward's shape checks become constants in the trace; that is intended, since only
        # the batch axis varies and S is fixed by the checkpoint.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # torch 2.13 deprecates TorchScript (trace/save/load) and the TorchScript-based ONNX
        # exporter. They are what works here: the torch.export-based ONNX exporter needs onnxscript.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="The feature will be removed")
        # ML-Decoder's output slice is left unfolded in the graph; a speed note, not a problem.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        yield


def _write(format: str, model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    with _known_exporter_warnings_silenced():
        if format == "onnx":
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        else:
            with torch.no_grad():
                traced = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(traced, str(path))


def _check_export(format: str, path: Path, reference: nn.Module, info: ClassifierInfo, batch_size: int,
                  input_dtype: str, tolerance: float) -> tuple[str | None, tuple[int, ...], float | None]:
    """Run the exported file at two batch sizes; returns ``(runtime, batch sizes, max abs diff)``."""
    run = _onnx_runner(path) if format == "onnx" else _torchscript_runner(path)
    if run is None:
        return None, (), None
    runtime, run_exported = run
    sizes, worst = (batch_size, batch_size + 1), 0.0
    for seed, size in enumerate(sizes, start=1):
        images = sample_batch(info, size, input_dtype, seed=seed)
        with torch.inference_mode():
            expected = reference(images).float().numpy()
        got = run_exported(images)
        if got.shape != expected.shape:
            raise ExportCheckError(f"Expected the exported model to return logits {list(expected.shape)} for "
                                   f"a batch of {size}, but got {list(got.shape)} ({path}).")
        diff = float(np.abs(got - expected).max())
        if diff > tolerance * max(1.0, float(np.abs(expected).max())):
            raise ExportCheckError(f"The exported {format} model differs from PyTorch by up to {diff:.3g} on a "
                                   f"batch of {size} (tolerance {tolerance:g}, relative to the logits' scale); "
                                   "nothing was written. Please report this with the checkpoint's arch and head.")
        worst = max(worst, diff)
    return runtime, sizes, worst


def _onnx_runner(path: Path):
    try:
        import onnxruntime
    except ImportError:
        # A warning, not an error: the file is written and likely right; only the proof is missing.
        log.warning("onnxruntime is not installed, so the ONNX file was not run to compare its outputs "
                    "with PyTorch's. Fix: pip install onnxruntime")
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return "onnxruntime", lambda images: session.run(["logits"], {"images": images.numpy()})[0]


def _torchscript_runner(path: Path):
    with _known_exporter_warnings_silenced():
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run(images: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return loaded(images).float().numpy()

    return "torch.jit.load", run
