"""TResNet-M speed and activation memory: in-place ABN vs BN, fused vs unfused, NHWC vs NCHW.

    python benchmarks/bench_model.py [--batch 16] [--size 224] [--rounds 5] [--threads N]

The baseline is ``norm="bn", channels_last=False``: the same function as timm's TResNet-M
(timm itself cannot run on this CPU-only torch build). Configurations are timed round-robin and
the median of each is reported, so every ratio comes from one run on the same machine state.
Memory is the bytes autograd saves for backward: exact and repeatable.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Callable

import torch

if __package__ in (None, ""):  # run as `python benchmarks/NAME.py`: make `benchmarks.` importable
    import sys as _sys
    from pathlib import Path as _Path

    _sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))

from tresnet_ft import create_model, fuse_for_inference
from benchmarks.memory import saved_activation_bytes
from tresnet_ft.models.norm_act import BatchNormAct2d


def _time_per_image(step: Callable[[], None], batch: int, iters: int) -> float:
    step()  # warm-up (allocator, oneDNN primitive cache)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - start) / (iters * batch)


def _train_step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> Callable[[], None]:
    model.train()

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def _infer_step(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    model.eval()

    def step() -> None:
        with torch.inference_mode():
            model(x)

    return step


def pretrained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Give every norm a non-zero scale, as after loading published weights."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BatchNormAct2d):
                m.weight.fill_(1.0)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5, help="round-robin repetitions; medians reported")
    parser.add_argument("--iters", type=int, default=2, help="steps per timing")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size)
    target = torch.randint(0, 1000, (args.batch,))

    def build(norm: str, channels_last: bool) -> torch.nn.Module:
        return pretrained_like(create_model("tresnet_m", 1000, norm=norm, channels_last=channels_last))

    baseline = build("bn", channels_last=False)
    bn_nhwc = build("bn", channels_last=True)
    iabn = build("inplace_abn", channels_last=True)
    fused = fuse_for_inference(baseline)
    infer = {"bn NCHW (baseline)": _infer_step(baseline, x), "bn NHWC": _infer_step(bn_nhwc, x),
             "iabn NHWC": _infer_step(iabn, x), "fused NHWC": _infer_step(fused, x)}
    train = {"bn NCHW (baseline)": _train_step(baseline, x, target), "bn NHWC": _train_step(bn_nhwc, x, target),
             "iabn NHWC (default)": _train_step(iabn, x, target)}

    results: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for group, steps in (("inference", infer), ("train", train)):
            for name, step in steps.items():
                results.setdefault(f"{group}: {name}", []).append(_time_per_image(step, args.batch, args.iters))

    print(f"TResNet-M, batch {args.batch}, {args.size} px, {args.threads} threads, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")
    for group in ("inference", "train"):
        base = statistics.median(results[f"{group}: bn NCHW (baseline)"])
        for key, times in results.items():
            if key.startswith(group):
                t = statistics.median(times)
                print(f"  {key:34s} {1 / t:8.1f} img/s  {base / t:5.2f}x baseline")

    fresh_iabn = create_model("tresnet_m", 1000, norm="inplace_abn")
    mem = {"bn NCHW (baseline)": saved_activation_bytes(baseline.train(), x),
           "iabn NHWC, pretrained-like weights": saved_activation_bytes(iabn.train(), x),
           "iabn NHWC, fresh init (zero last norms)": saved_activation_bytes(fresh_iabn.train(), x)}
    base = mem["bn NCHW (baseline)"]
    print("saved for backward (parameters excluded):")
    for key, nbytes in mem.items():
        print(f"  {key:40s} {nbytes / 2**20:8.1f} MiB  {nbytes / base:5.2f}x baseline")


if __name__ == "__main__":
    main()
