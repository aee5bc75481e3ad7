"""Static int8 quantisation of a checkpoint's ONNX export, kept only if it stays accurate.

``tresnet-ft export CKPT --format onnx --int8 [--calibration N|FOLDER] [--max-drop 1.0]``:

1. export the fp32 ONNX model (:func:`export_model`, verified against PyTorch), ``uint8`` input;
2. prepare it for quantisation (``onnxruntime.quantization.shape_inference.quant_pre_process``:
   shape inference and graph clean-up) and quantise it with ``quantize_static``: QDQ format,
   int8 weights per output channel, uint8 activations (the ``u8s8`` kernels x86 CPUs with VNNI
   run fastest), ranges from MinMax calibration over ``N`` training images of the checkpoint's
   dataset (spread evenly over the split, so every class is seen) or every image in a folder;
3. measure the validation top-1 (single-label) or mAP (multi-label) of the fp32 and the int8
   model in ONNX Runtime, on the same images (:mod:`.accuracy`);
4. refuse (:class:`AccuracyGateError`, nothing written) when the int8 model loses more than
   ``max_drop`` points; otherwise write the int8 model and its sidecar, which records the
   quantisation, the calibration images and both figures. Both files are written atomically
   (:func:`tresnet_ft.outputs.atomic_output`), the sidecar first, as :func:`export_model` does.
"""
from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from ..errors import InvalidValueError, MissingInputError, UserError
from ..fetch.packages import import_package
from ..outputs import atomic_output, check_output
from .accuracy import DatasetSource, checkpoint_dataset, evaluate, labelled_batches, split_images
from .export import export_model
from .inputs import list_image_paths
from .loading import open_checkpoint
from .onnx_runtime import OnnxRuntime
from .sidecar import check_sidecar, read_sidecar, write_sidecar
from .stream import ImageBatchStream, make_batch_loader

log = logging.getLogger(__name__)

INPUT_DTYPE = "uint8"  # the graph scales pixels itself; calibration sees what predict feeds
CALIBRATION_BATCH = 8  # calibration keeps every activation of a batch: small batches bound its memory
METHOD = ("onnxruntime quantize_static, QDQ, int8 weights per output channel, uint8 activations, "
          "MinMax calibration")


class AccuracyGateError(UserError, RuntimeError):
    """The int8 model lost more validation accuracy than allowed; nothing was written."""


@dataclass
class QuantizationReport:
    """What :func:`quantize_model` measured and wrote.

    Attributes:
        path, sidecar: the int8 model and its JSON.
        metric: ``"top1"`` or ``"mAP"`` (percent); ``fp32``/``int8``: its value for each model on
            ``validation_images`` images; ``drop``: ``fp32 - int8`` in points.
        calibration_images, calibration_source: what the ranges were measured on.
        seconds: wall time of the whole export.
    """

    path: Path
    sidecar: Path
    metric: str
    fp32: float
    int8: float
    drop: float
    validation_images: int
    calibration_images: int
    calibration_source: str
    seconds: float

    def __str__(self) -> str:
        return (f"Wrote {self.path} (int8, {METHOD}) and {self.sidecar.name} in {self.seconds:.1f} s. Validation "
                f"{self.metric} on {self.validation_images} images: fp32 {self.fp32:.2f}, int8 {self.int8:.2f} "
                f"(drop {self.drop:.2f} points); calibrated on {self.calibration_images} images "
                f"({self.calibration_source}).")


def parse_calibration(text: str | int | Path) -> int | Path:
    """``"256"`` → 256 images; anything else → a folder of images (``--calibration N|FOLDER``)."""
    if isinstance(text, (int, Path)):
        return text
    return int(text) if text.strip().isdigit() else Path(text)


def quantize_model(checkpoint: str | Path, output: Path, calibration: int | Path = 256, max_drop: float = 1.0,
                   data_root: str | Path | None = None, dataset: DatasetSource | None = None,
                   batch_size: int = 32, num_workers: int | None = None) -> QuantizationReport:
    """Write ``output``, the int8 ONNX model of ``checkpoint``, if its accuracy drop is at most ``max_drop``.

    Args:
        checkpoint: a checkpoint written by ``tresnet-ft fit`` (it names its dataset).
        output: the ``.onnx`` to write; ``<output>.json`` goes next to it.
        calibration: how many training images to calibrate on, or a folder of images.
        max_drop: the largest accepted drop of validation top-1 (or mAP), in points (>= 0).
        data_root: where the checkpoint's dataset is (see :func:`checkpoint_dataset`).
        dataset: the labelled data to use instead of the checkpoint's own (e.g. for a checkpoint
            saved with ``write_classifier``).
        batch_size, num_workers: for the validation passes.

    Returns:
        A :class:`QuantizationReport` (also logged).

    Raises:
        AccuracyGateError: the drop exceeds ``max_drop`` (the message names both figures).
        InvalidValueError: bad options; the outputs are not ours to replace; the checkpoint names no
            dataset or its data does not fit it.
        MissingInputError: the checkpoint, the calibration folder or the data is missing.
    """
    started, output = time.perf_counter(), Path(output)
    _check_options(calibration, max_drop)
    check_output(output, [checkpoint], example_name="model_int8.onnx")
    check_sidecar(output, [checkpoint])
    import_package("onnxruntime", "int8 quantisation")  # before the checkpoint loads: fail fast
    info = open_checkpoint(checkpoint).info
    source = dataset or checkpoint_dataset(checkpoint, data_root)
    validation = split_images(source, "val", info)  # before anything slow: missing data fails fast
    with tempfile.TemporaryDirectory(prefix="tresnet-ft-int8-") as folder:
        fp32 = export_model(checkpoint, "onnx", Path(folder) / "fp32.onnx", input_dtype=INPUT_DTYPE)
        batches, described = _calibration_batches(calibration, source, info)
        int8_path, used = quantize_onnx(fp32.path, Path(folder), batches)
        fp32_metric = evaluate(OnnxRuntime(fp32.path).logits, validation, info.task, batch_size, num_workers)
        int8_metric = evaluate(OnnxRuntime(int8_path).logits, validation, info.task, batch_size, num_workers)
        metric, drop = ("mAP" if info.task == "multi_label" else "top1"), fp32_metric - int8_metric
        log.info("Validation %s: fp32 %.2f, int8 %.2f (drop %.2f points, allowed %g)", metric, fp32_metric,
                 int8_metric, drop, max_drop)
        if drop > max_drop:
            raise AccuracyGateError(
                f"The int8 model's validation {metric} is {int8_metric:.2f} against the fp32 model's "
                f"{fp32_metric:.2f}: a drop of {drop:.2f} points, more than --max-drop {max_drop:g}, so "
                f"{output} was not written. Fix: calibrate on more images (--calibration {max(4 * used, 512)}) "
                f"or ones like those predicted (--calibration FOLDER), accept the drop (--max-drop "
                f"{math.ceil(drop * 10) / 10:g}), or keep the fp32 export (no --int8).")
        record = {"method": METHOD, "calibration_images": used, "calibration_source": described,
                  "metric": metric, "fp32": round(fp32_metric, 4), "int8": round(int8_metric, 4),
                  "drop": round(drop, 4), "max_drop": max_drop, "validation_images": len(validation),
                  "onnxruntime_version": _ort_version()}
        sidecar = _write(int8_path, output, checkpoint, record)
    report = QuantizationReport(output, sidecar, metric, fp32_metric, int8_metric, drop, len(validation), used,
                                described, time.perf_counter() - started)
    log.info("%s", report)
    return report


def _check_options(calibration: int | Path, max_drop: float) -> None:
    if isinstance(calibration, bool) or not isinstance(calibration, (int, Path)):
        raise InvalidValueError(f"Expected calibration to be a number of images or a folder, but got {calibration!r}.")
    if isinstance(calibration, int) and calibration < 1:
        raise InvalidValueError(f"Expected --calibration to be at least 1 image, but got {calibration}. "
                                "Fix: e.g. --calibration 256, or --calibration FOLDER.")
    if isinstance(calibration, Path) and not calibration.is_dir():
        raise MissingInputError(f"Expected --calibration to be a number of images or a folder of images, but "
                                f"{calibration} is {'a file' if calibration.exists() else 'not there'}. "
                                "Fix: e.g. --calibration 256, or --calibration photos/.")
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not 0 <= max_drop <= 100:
        raise InvalidValueError(f"Expected --max-drop to be a number of points from 0 to 100, but got {max_drop!r}. "
                                "Fix: e.g. --max-drop 1.0 (0 accepts no loss at all).")


def _calibration_batches(calibration: int | Path, source: DatasetSource,
                         info: Any) -> tuple[Iterator[torch.Tensor], str]:
    """``uint8 [B, 3, S, S]`` batches to calibrate on, and where they come from (for the sidecar)."""
    if isinstance(calibration, Path):
        paths = list_image_paths([calibration])
        stream = ImageBatchStream(paths, info.eval_transform(output="uint8"), info.image_size, CALIBRATION_BATCH,
                                  info.preprocessing.decode_size)
        batches = (batch["images"] for batch in make_batch_loader(stream, 0) if len(batch["images"]))
        return batches, f"the images in {calibration}"
    train = split_images(source, "train", info)
    # Evenly spread over the split: folders and tables are sorted by class, their first N images are not.
    count = min(calibration, len(train))
    picked = Subset(train, np.linspace(0, len(train) - 1, count).round().astype(int).tolist())
    batches = (images for images, _ in labelled_batches(picked, CALIBRATION_BATCH))
    return batches, f"{count} images spread over the train split of {source.name}"


def quantize_onnx(fp32: Path, folder: Path, batches: Iterator[torch.Tensor]) -> tuple[Path, int]:
    """Quantise the exported ``fp32`` model (with its sidecar) into ``folder/int8.onnx`` (with a copy of
    the sidecar), calibrating on ``batches`` of ``uint8 [B, 3, S, S]``; returns the int8 file and the
    number of calibration images."""
    quantization = import_package("onnxruntime.quantization", "int8 quantisation", "onnxruntime")
    folder.mkdir(parents=True, exist_ok=True)
    prepared, int8 = folder / "prepared.onnx", folder / "int8.onnx"
    shape_inference = import_package("onnxruntime.quantization.shape_inference", "int8 quantisation", "onnxruntime")
    shape_inference.quant_pre_process(str(fp32), str(prepared))
    counted = [0]

    class Reader(quantization.CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            images = next(batches, None)
            if images is None:
                return None
            counted[0] += len(images)
            return {"images": np.ascontiguousarray(images.numpy())}

    quantization.quantize_static(
        str(prepared), str(int8), Reader(), quant_format=quantization.QuantFormat.QDQ, per_channel=True,
        activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
        calibrate_method=quantization.CalibrationMethod.MinMax)
    if counted[0] == 0:
        raise InvalidValueError("No calibration image could be read. Fix: --calibration with readable images.")
    # The prepared model is the fp32 export's graph: its sidecar describes the int8 one too.
    shutil.copyfile(fp32.with_name(fp32.name + ".json"), int8.with_name(int8.name + ".json"))
    return int8, counted[0]


def _write(int8: Path, output: Path, checkpoint: str | Path, record: dict[str, Any]) -> Path:
    _, metadata = read_sidecar(int8)
    metadata.update(file=output.name, check_max_abs_diff=None, quantization=record)
    with atomic_output(output, [checkpoint], example_name="model_int8.onnx") as partial:
        shutil.copyfile(int8, partial)
        sidecar = write_sidecar(output, metadata, inputs=[checkpoint])
    return sidecar


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)
