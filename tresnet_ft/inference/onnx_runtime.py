"""Run an exported classifier in ONNX Runtime on the CPU: the :class:`~.runtime.Runtime` behind
``tresnet-ft predict --runtime onnxruntime`` (and ``auto`` on a machine without CUDA).

The ``.onnx`` file is read with its sidecar (``model.onnx.json``, :func:`read_sidecar`), which
says what the classifier is (classes, task, thresholds) and how its input is prepared; the session
is checked against it (input ``images`` of the sidecar's dtype and ``[B, 3, S, S]``, output
``logits [B, K]``) before the first image is read.

Session settings, and why:

* ``intra_op_num_threads``: the physical cores this process may run on
  (:func:`inference_threads`). ONNX Runtime's own default counts the machine's cores, ignoring
  the CPU affinity a container or ``taskset`` gives the process, so it oversubscribes there;
  and a second hyper-thread on a core adds nothing to convolutions bound by the core's FMA units.
* ``inter_op_num_threads=1``, sequential execution: the graph is one chain of convolutions, so
  there is nothing to run side by side, only threads to wake.
* graph optimisation ``ORT_ENABLE_ALL``: constant folding, conv + activation fusion, and the
  NCHWc layout for the CPU's vector width.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InvalidValueError, MissingInputError
from ..fetch.packages import import_package
from .sidecar import read_sidecar

log = logging.getLogger(__name__)


def inference_threads() -> int:
    """Physical cores this process may run on: its CPU affinity, hyper-thread siblings counted once."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in allowed:
        try:  # e.g. "0,32" or "0-1": the logical CPUs sharing this one's core
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:  # no sysfs (macOS, Windows, some sandboxes): count logical CPUs
            cores.add(str(cpu))
    return max(1, len(cores))


def session_options(threads: int | None = None) -> Any:
    """``onnxruntime.SessionOptions`` as the module doc explains; ``threads`` None: :func:`inference_threads`."""
    ort = import_package("onnxruntime", "ONNX Runtime inference")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or inference_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def open_session(model_path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session on ``model_path``, or one line saying why the file is unusable.

    Raises:
        MissingInputError: no such file.
        InvalidValueError: ONNX Runtime cannot load it (not ONNX, truncated, unsupported operators).
    """
    ort = import_package("onnxruntime", "ONNX Runtime inference")
    if not Path(model_path).is_file():
        raise MissingInputError(f"Expected an ONNX model file at {model_path}, but there is none. "
                                "Fix: pass the .onnx written by `tresnet-ft export`.")
    try:
        return ort.InferenceSession(str(model_path), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's pybind errors (InvalidProtobuf, Fail, ...) share no base but Exception
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise InvalidValueError(f"Cannot use {model_path}: ONNX Runtime cannot load it ({reason}). Fix: export "
                                "the checkpoint again with `tresnet-ft export CKPT -o model.onnx`.") from None


class OnnxRuntime:
    """An exported ``.onnx`` (with its sidecar) in an ONNX Runtime CPU session.

    Args:
        model_path: the ``.onnx`` file; ``<model_path>.json`` must be next to it.
        threads: intra-op threads; None: :func:`inference_threads`.

    Raises:
        MissingInputError: the model or its sidecar is missing.
        InvalidValueError: either is unusable, or they do not describe the same model.
    """

    name = "onnxruntime"

    def __init__(self, model_path: str | Path, threads: int | None = None) -> None:
        self.path = Path(model_path)
        self.device = torch.device("cpu")
        if not self.path.is_file():  # before the sidecar: the model's absence is the first thing to say
            open_session(self.path)
        self.info, self.metadata = read_sidecar(self.path)
        self.input_dtype: str = self.metadata["input"]["dtype"]
        self.session = open_session(self.path, threads)
        self._check_signature()
        self._buffer = torch.empty(0)  # float32 input, reused across batches (see stream.FloatInput)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8 [B, 3, S, S]`` → ``float32 [B, K]`` (scaled in the graph or here, as exported)."""
        if self.input_dtype == "uint8":
            array = np.ascontiguousarray(images.numpy())
        else:
            if len(self._buffer) < len(images):
                self._buffer = torch.empty(images.shape, dtype=torch.float32)
            array = self.info.preprocessing.to_float(images, out=self._buffer[: len(images)]).numpy()
        return torch.from_numpy(self.session.run(["logits"], {"images": array})[0])

    def _check_signature(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        size, classes = self.info.image_size, self.info.num_classes
        expected_type = "tensor(uint8)" if self.input_dtype == "uint8" else "tensor(float)"
        fits = (len(inputs) == 1 and inputs[0].name == "images" and inputs[0].type == expected_type
                and list(inputs[0].shape[1:]) == [3, size, size]
                and any(output.name == "logits" and list(output.shape[1:]) == [classes] for output in outputs))
        if not fits:
            got = ", ".join(f"{tensor.name} {tensor.type} {tensor.shape}" for tensor in (*inputs, *outputs))
            raise InvalidValueError(
                f"Cannot use {self.path}: its sidecar describes input 'images' {expected_type} [B, 3, {size}, "
                f"{size}] and output 'logits' [B, {classes}], but the model has {got}. Fix: keep each model "
                "with the sidecar exported along with it (`tresnet-ft export` writes both).")
