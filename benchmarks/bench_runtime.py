"""CPU inference runtimes against the plain-BN NCHW eager TResNet-M, and int8's accuracy on real digits.

    python benchmarks/bench_runtime.py [--batch 16] [--size 224] [--rounds 5] [--epochs 4] [--profile]

Speed (one run, round-robin, medians): the baseline is ``norm="bn", channels_last=False`` in eager
PyTorch, the function timm's TResNet-M computes (bench_model.py builds it the same way). Against it:
the fused PyTorch model (what ``predict --runtime torch`` runs), the ONNX export in ONNX Runtime
(fp32, with float32 and with uint8 input) and its static int8 quantisation (uint8 input), each
session set up as ``tresnet_ft.inference.onnx_runtime`` does. The int8 model for timing is
calibrated on random pixels: its speed does not depend on the ranges.

Accuracy: scikit-learn's handwritten digits (1,797 8x8 images, 10 classes), upscaled to 32 px and
written as a class-folder dataset (train / val: a stratified 25 % held out), train a TResNet-M from
scratch here (no pretrained weights offline); then ``quantize_model`` exports fp32 and int8 and
reports both top-1s on the held-out digits, the gate included. ``--profile`` prints ONNX Runtime's
per-operator times for the fp32 and int8 models.
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch

if __package__ in (None, ""):  # run as `python benchmarks/NAME.py`: make `benchmarks.` importable
    import sys as _sys

    _sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_model import _time_per_image, pretrained_like
from tresnet_ft import create_model, fuse_for_inference
from tresnet_ft.classifier.checkpoint import ClassifierInfo, write_classifier
from tresnet_ft.data import EvalPreprocessing
from tresnet_ft.inference.accuracy import DatasetSource
from tresnet_ft.inference.export import export_model
from tresnet_ft.inference.onnx_runtime import OnnxRuntime, inference_threads, session_options
from tresnet_ft.inference.quantize import quantize_model, quantize_onnx


def _speed_models(folder: Path, size: int, batch: int) -> dict[str, Callable[[], Any]]:
    torch.manual_seed(0)
    baseline = pretrained_like(create_model("tresnet_m", 1000, norm="bn", channels_last=False)).eval()
    fused = fuse_for_inference(baseline)
    info = ClassifierInfo("tresnet_m", [f"c{i}" for i in range(1000)], "single_label", EvalPreprocessing(size),
                          norm="bn")
    checkpoint = write_classifier(folder / "speed.ckpt", baseline, info)
    fp32 = export_model(checkpoint, "onnx", folder / "fp32.onnx").path
    fp32_u8 = export_model(checkpoint, "onnx", folder / "fp32_u8.onnx", input_dtype="uint8").path
    random = (torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8) for _ in range(4))
    int8, _ = quantize_onnx(fp32_u8, folder / "int8", random)
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    floats = pixels.float() / 255
    runtimes = {name: OnnxRuntime(path) for name, path in (("fp32", fp32), ("fp32_u8", fp32_u8), ("int8", int8))}

    def eager(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], Any]:
        def step() -> Any:
            with torch.inference_mode():
                return model(x)
        return step

    return {"PyTorch bn NCHW eager (baseline)": eager(baseline, floats),
            "PyTorch fused NHWC (--runtime torch)": eager(fused, floats.contiguous(memory_format=torch.channels_last)),
            "ONNX Runtime fp32, float32 input": lambda: runtimes["fp32"].logits(pixels),
            "ONNX Runtime fp32, uint8 input": lambda: runtimes["fp32_u8"].logits(pixels),
            "ONNX Runtime int8 (QDQ, per-channel)": lambda: runtimes["int8"].logits(pixels)}


def speed(args: argparse.Namespace, folder: Path) -> dict[str, Path]:
    steps = _speed_models(folder, args.size, args.batch)
    results: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(args.rounds):
        for name, step in steps.items():
            results[name].append(_time_per_image(step, args.batch, args.iters))
    base = statistics.median(results["PyTorch bn NCHW eager (baseline)"])
    print(f"TResNet-M, batch {args.batch}, {args.size} px, 1000 classes; torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, ONNX Runtime with {inference_threads()} intra-op threads; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs; "
          f"medians of {args.rounds} round-robin rounds")
    for name, times in results.items():
        t = statistics.median(times)
        print(f"  {name:40s} {1 / t:7.1f} img/s  {base / t:5.2f}x baseline")
    return {"fp32": folder / "fp32.onnx", "int8": folder / "int8" / "int8.onnx"}


def write_digits(root: Path, size: int) -> None:
    """scikit-learn's digits as ``root/{train,val}/<digit>/<n>.png`` (RGB, upscaled, 25 % held out)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = (digits.images * (255 / 16)).astype(np.uint8)
    splits = train_test_split(np.arange(len(pixels)), test_size=0.25, stratify=digits.target, random_state=0)
    for split, indices in zip(("train", "val"), splits):
        for index in indices:
            path = root / split / str(digits.target[index]) / f"{index}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image = cv2.resize(pixels[index], (size, size), interpolation=cv2.INTER_LINEAR)
            cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))


def train_digits(root: Path, size: int, epochs: int) -> tuple[torch.nn.Module, ClassifierInfo]:
    """TResNet-M from scratch on the digits' train split (AdamW, one-cycle, small random shifts)."""
    from tresnet_ft.data.registry import load_dataset

    info = ClassifierInfo("tresnet_m", [str(d) for d in range(10)], "single_label", EvalPreprocessing(size))
    train = load_dataset("folder", str(root), "train", download=False, progress=False)
    transform = info.eval_transform()
    images = torch.stack([transform(train[i][0]) for i in range(len(train))])
    labels = torch.tensor([int(train[i][1]) for i in range(len(train))])
    torch.manual_seed(0)
    model = create_model("tresnet_m", 10, residual_init=0.2).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps_per_epoch, batch = -(-len(images) // 32), 32
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=epochs * steps_per_epoch)
    for epoch in range(epochs):
        order, started, total = torch.randperm(len(images)), time.perf_counter(), 0.0
        for step in range(steps_per_epoch):
            pick = order[step * batch:(step + 1) * batch]
            shift = tuple(int(v) for v in torch.randint(-size // 16, size // 16 + 1, (2,)))
            loss = torch.nn.functional.cross_entropy(model(images[pick].roll(shift, dims=(2, 3))), labels[pick])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / steps_per_epoch:.3f} ({time.perf_counter() - started:.0f} s)")
    return model.eval(), info


def accuracy(args: argparse.Namespace, folder: Path) -> None:
    root = folder / "digits"
    write_digits(root, args.digits_size)
    print(f"Digits at {args.digits_size} px, TResNet-M from scratch, {args.epochs} epochs:")
    model, info = train_digits(root, args.digits_size, args.epochs)
    checkpoint = write_classifier(folder / "digits.ckpt", model, info)
    report = quantize_model(checkpoint, folder / "digits_int8.onnx", calibration=args.calibration, max_drop=100.0,
                            dataset=DatasetSource("folder", str(root)))
    print(f"  held-out top-1 on {report.validation_images} digits: fp32 {report.fp32:.2f}, int8 {report.int8:.2f}, "
          f"drop {report.drop:.2f} points ({report.calibration_images} calibration images)")


def profile(models: dict[str, Path], batch: int, size: int) -> None:
    import onnxruntime

    for name, path in models.items():
        options = session_options()
        options.enable_profiling = True
        options.profile_file_prefix = str(path.with_suffix(""))
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        pixels = np.random.default_rng(0).integers(0, 256, (batch, 3, size, size), dtype=np.uint8)
        feed = {"images": pixels if "uint8" in session.get_inputs()[0].type else pixels.astype(np.float32) / 255}
        for _ in range(3):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
        per_op: collections.Counter = collections.Counter()
        for event in events:
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                per_op[event["args"]["op_name"]] += event["dur"]
        total = sum(per_op.values())
        print(f"Profile, {name}: {total / 3e3:.0f} ms per batch of {batch}; " + ", ".join(
            f"{op} {100 * t / total:.1f}%" for op, t in per_op.most_common(8)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5, help="round-robin repetitions; medians reported")
    parser.add_argument("--iters", type=int, default=2, help="batches per timing")
    parser.add_argument("--epochs", type=int, default=4, help="digits training epochs")
    parser.add_argument("--digits-size", type=int, default=32, help="digits side in px (8x8 upscaled)")
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
        models = speed(args, Path(tmp))
        if args.profile:
            profile(models, args.batch, args.size)
        if not args.skip_accuracy:
            accuracy(args, Path(tmp))


if __name__ == "__main__":
    main()
