"""Predict with a trained classifier on any number of images, streaming rows to a CSV or JSONL file.

No Lightning, so it runs wherever the checkpoint can be read. Memory is flat in the number of
images: paths are listed up front, then images are decoded a batch at a time by loader workers and
each batch's rows are written before the next batch is taken. The classifier runs in a
:class:`~tresnet_ft.inference.runtime.Runtime`: the norm-folded PyTorch model
(:func:`tresnet_ft.fuse_for_inference`) or an ONNX export in ONNX Runtime (``runtime=``); both take
the same ``uint8`` batches and give the same rows.

Example:
    >>> summary = predict_to_file("runs/flowers/checkpoints/best.ckpt", ["photos/"],
    ...                           Path("predictions.csv"), top_k=3)      # doctest: +SKIP
    >>> summary.num_predicted, summary.unreadable[:1]                   # doctest: +SKIP
    (1204, [('photos/broken.jpg', 'truncated JPEG (no end-of-image marker)')])
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.unreadable import describe_paths
from .inputs import list_image_paths
from ..data.workers import default_num_workers
from .rows import EXAMPLE_OUTPUT, OUTPUT_SUFFIXES, PredictionWriter, thresholded_rows, top_k_rows
from .runtime import RUNTIMES, Runtime, open_runtime
from .stream import ImageBatchStream, make_batch_loader
from ..errors import InvalidValueError
from ..outputs import check_output

log = logging.getLogger(__name__)


@dataclass
class PredictSummary:
    """What a prediction run did.

    Attributes:
        output: the CSV/JSONL file written.
        task: ``"single_label"`` or ``"multi_label"``.
        num_images: images listed from the inputs.
        num_predicted: rows written (``num_images - len(unreadable)``).
        unreadable: ``(path, reason)`` for every file that could not be decoded, in input order.
        seconds: wall time of the prediction loop (after loading the model and listing inputs).

    ``str(summary)`` says it in a sentence: how many images, where the rows went, how many were skipped.
    """

    output: Path
    task: str
    num_images: int
    num_predicted: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.num_images / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        of = f"{self.num_predicted} of {self.num_images}" if self.unreadable else f"{self.num_predicted}"
        text = (f"Wrote predictions for {of} image(s) to {self.output} in {self.seconds:.1f} s "
                f"({self.images_per_second:.1f} images/s)")
        if self.unreadable:
            text += f"; {len(self.unreadable)} unreadable file(s) were skipped"
        return text + "."


def predict_to_file(checkpoint: str | Path, inputs: Sequence[str | Path], output: Path,
                    top_k: int = 5, threshold: float | None = None, batch_size: int = 32,
                    num_workers: int | None = None, device: str | torch.device | None = None,
                    progress: bool = True, runtime: str = "auto") -> PredictSummary:
    """Predict every image named by ``inputs`` and write one row per readable image to ``output``.

    Args:
        checkpoint: a tresnet-ft classifier checkpoint (``tresnet-ft fit`` or ``write_classifier``),
            or an ``.onnx`` written by ``tresnet-ft export`` with its sidecar ``.onnx.json``.
        inputs: image files, folders (searched recursively, hidden files skipped, sorted) and
            CSV/JSONL tables with an ``image`` column (paths relative to the table's folder).
        output: ``.csv`` or ``.jsonl``; the columns are described in :mod:`tresnet_ft.inference.rows`.
        top_k: single-label: how many classes per row (at most all ``K``). Ignored for multi-label.
        threshold: multi-label: one decision threshold in ``[0, 1]`` for every class instead of the
            checkpoint's tuned per-class ones (0.5 when it has none). Single-label: not allowed.
        batch_size: images per forward pass ``[B, 3, S, S]``.
        num_workers: decoding processes; None picks one per CPU core minus one (1..8); 0 decodes
            in this process.
        device: where the model runs; None picks CUDA when available, else the CPU.
        progress: show a tqdm progress bar (images).
        runtime: ``"torch"``, ``"onnxruntime"`` (CPU; a checkpoint is exported once and cached) or
            ``"auto"`` (:func:`~tresnet_ft.inference.runtime.open_runtime` says which it picks).

    Returns:
        A :class:`PredictSummary`. Files that cannot be decoded are listed there (and logged once
        with their count and the first few), never fatal.

    Raises:
        ValueError: bad ``output`` suffix, ``top_k``, ``threshold``, ``batch_size`` or ``runtime``; an ``output`` that
            is a folder, a device, a FIFO or a socket, or one of the files read (an input table, an
            image, the checkpoint); not a tresnet-ft checkpoint (or an unsafe pickle); a table
            without an ``image`` column; no images found; an ``.onnx`` that ONNX Runtime cannot load,
            or whose sidecar is not a tresnet-ft sidecar.
        FileNotFoundError: the checkpoint or an input does not exist; an ``.onnx`` has no sidecar.
        DiskFullError: the disk filled up while writing ``output`` (an old ``output`` is kept as it was).

    ``output`` is replaced only when every row is written (see :class:`PredictionWriter`): an error
    or a killed run leaves the previous file (or none), never a short one that looks complete.
    """
    output = Path(output)
    _check_options(output, top_k, threshold, batch_size, runtime)
    paths = list_image_paths(inputs)  # before the model loads: input mistakes fail fast
    # Every file read is stat'ed only when the output exists (a rerun): none can be it otherwise.
    check_output(output, [checkpoint, *inputs, *paths], example_name=EXAMPLE_OUTPUT)
    model = open_runtime(checkpoint, runtime, device, max_batch_size=batch_size)
    _check_threshold_fits_task(threshold, model.info.task, checkpoint)
    summary = PredictSummary(output, model.info.task, num_images=len(paths))
    workers = default_num_workers() if num_workers is None else num_workers
    log.info("Predicting %d image(s) with %s in %s on %s (%d loader worker(s)) into %s",
             len(paths), Path(checkpoint).name, model.name, model.device, workers, output)
    started = time.perf_counter()
    _run(model, paths, summary, min(top_k, model.info.num_classes), threshold, batch_size, workers, progress)
    summary.seconds = time.perf_counter() - started
    _report_unreadable(summary)
    return summary


def _run(model: Runtime, paths: list[str], summary: PredictSummary, top_k: int, threshold: float | None,
         batch_size: int, workers: int, progress: bool) -> None:
    info = model.info
    stream = ImageBatchStream(paths, info.eval_transform(output="uint8"), info.image_size, batch_size,
                              info.preprocessing.decode_size)
    loader = make_batch_loader(stream, workers, pin_memory=model.device.type == "cuda")
    thresholds = info.decision_thresholds(threshold)
    bar = tqdm(total=len(paths), unit="img", desc="predict", disable=not progress)
    with torch.inference_mode(), PredictionWriter(summary.output, info.task, top_k) as writer, bar:
        for batch in loader:
            # The loader turns tuples into lists on the way; keep (path, reason) pairs.
            summary.unreadable.extend(tuple(entry) for entry in batch["unreadable"])
            if batch["paths"]:
                # uint8 through the loader and into the runtime, scaled there (4x fewer bytes to move)
                logits = model.logits(batch["images"])
                if info.task == "multi_label":
                    rows = thresholded_rows(batch["paths"], logits, info.classes, thresholds)
                else:
                    rows = top_k_rows(batch["paths"], logits, info.classes, top_k)
                writer.write(rows)
                summary.num_predicted += len(rows)
            bar.update(len(batch["paths"]) + len(batch["unreadable"]))


def _check_options(output: Path, top_k: int, threshold: float | None, batch_size: int, runtime: str) -> None:
    check_output(output, example_name=EXAMPLE_OUTPUT)  # a folder is named as one, before its suffix
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise InvalidValueError(f"Expected the output file to end in {' or '.join(OUTPUT_SUFFIXES)}, but got "
                         f"{output}. Fix: e.g. -o predictions.csv or -o predictions.jsonl.")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InvalidValueError(f"Expected top_k to be an integer of at least 1, but got {top_k!r}.")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise InvalidValueError(f"Expected threshold to be a probability in [0, 1] (it is compared with sigmoid "
                         f"scores), but got {threshold}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidValueError(f"Expected batch_size to be an integer of at least 1, but got {batch_size!r}.")
    if runtime not in RUNTIMES:
        raise InvalidValueError(f"Expected runtime to be one of {list(RUNTIMES)}, but got {runtime!r}. "
                                "Fix: --runtime auto, torch or onnxruntime.")


def _check_threshold_fits_task(threshold: float | None, task: str, checkpoint: str | Path) -> None:
    if threshold is not None and task != "multi_label":
        raise InvalidValueError(f"A threshold applies to multi-label checkpoints, but {checkpoint} is {task}: "
                         "its rows are the top-k classes. Fix: drop --threshold, or use --top-k.")


def _report_unreadable(summary: PredictSummary) -> None:
    if summary.unreadable:
        bad_paths, reasons = zip(*summary.unreadable)
        log.warning("Skipped %d unreadable image(s) of %d: %s", len(bad_paths), summary.num_images,
                    describe_paths(list(bad_paths), list(reasons)))
    log.info("%s", summary)
