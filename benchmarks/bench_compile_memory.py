"""Bytes saved for backward by TResNet-M, eager vs ``torch.compile``, plain BN vs in-place ABN.

    python benchmarks/bench_compile_memory.py [--size 64] [--batch 2] [--steps 4]

Each compiled model trains ``--steps`` steps as the module does (``refresh_invertibility`` before
each forward, fused AdamW), then the bytes its graph saves for backward are measured
(``benchmarks.memory.saved_activation_bytes``: exact and repeatable). Also reported: the
number of graphs compiled and graph breaks (one graph and none means no break per layer and no
recompile per step). Norm scales are set to 1, as after loading published weights. Compiling the
full model takes minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch._dynamo.utils import counters

if __package__ in (None, ""):  # run as `python benchmarks/NAME.py`: make `benchmarks.` importable
    import sys as _sys
    from pathlib import Path as _Path

    _sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))

from tresnet_ft import create_model
from benchmarks.memory import saved_activation_bytes
from tresnet_ft.models.norm_act import refresh_invertibility

from bench_model import pretrained_like  # this folder is on sys.path when run as a script


def measure(norm: str, x: torch.Tensor, steps: int) -> dict[str, float]:
    """Eager and compiled saved bytes, compile time, graphs and graph breaks for one norm."""
    torch._dynamo.reset()
    counters.clear()
    model = pretrained_like(create_model("tresnet_m", 10, norm=norm)).train()
    result = {"eager": saved_activation_bytes(model, x)}
    model.compile()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    start = time.perf_counter()
    for step in range(steps):
        refresh_invertibility(model)
        model(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        if step == 0:
            result["compile_s"] = time.perf_counter() - start
    refresh_invertibility(model)
    result["compiled"] = saved_activation_bytes(model, x)
    result["graphs"] = counters["stats"]["unique_graphs"]
    result["graph_breaks"] = sum(counters["graph_break"].values())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size)
    results = {norm: measure(norm, x, args.steps) for norm in ("bn", "inplace_abn")}
    base = results["bn"]["eager"]
    print(f"TResNet-M, batch {args.batch}, {args.size} px, torch {torch.__version__}; saved for backward:")
    for norm, r in results.items():
        for mode in ("eager", "compiled"):
            print(f"  {norm:12s} {mode:9s} {r[mode] / 2**20:8.2f} MiB  {r[mode] / base:5.3f}x eager BN")
        print(f"  {norm:12s} compile {r['compile_s']:.0f} s, {r['graphs']} graph(s), {r['graph_breaks']} graph breaks")
    ratio = results["inplace_abn"]["compiled"] / results["bn"]["compiled"]
    print(f"  compiled in-place ABN / compiled BN: {ratio:.3f}x")


if __name__ == "__main__":
    main()
