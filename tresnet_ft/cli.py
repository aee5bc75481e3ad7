"""The ``tresnet-ft`` command.

    tresnet-ft models            the published pretrained weights
    tresnet-ft smoke [--arch A]  offline check: build, train a few steps, fuse, compare
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Optional, Sequence

import torch

from .models import ARCHS, PRETRAINED, WeightsUnavailableError, create_model, fuse_for_inference

log = logging.getLogger("tresnet_ft")


def _cmd_models(_: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Published TResNet weights (load with create_model(name, pretrained=True))")
    for column in ("name", "hub id", "input", "classes", "ImageNet top-1"):
        table.add_column(column)
    for name, cfg in PRETRAINED.items():
        top1 = f"{cfg.top1:.1f}" if cfg.top1 else "-"
        table.add_row(name, cfg.hub_id, str(cfg.input_size), str(cfg.num_classes), top1)
    Console().print(table)
    return 0


def _cmd_smoke(args: argparse.Namespace) -> int:
    """A few optimisation steps on random images, then fused-vs-unfused agreement."""
    torch.manual_seed(0)
    model = create_model(args.arch, num_classes=4).train()
    images = torch.rand(args.batch, 3, args.size, args.size)
    labels = torch.arange(args.batch) % 4
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    start = time.perf_counter()
    for step in range(args.steps):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log.info("step %d/%d  loss %.4f", step + 1, args.steps, loss.item())
    elapsed = time.perf_counter() - start
    model.eval()
    with torch.inference_mode():
        gap = (fuse_for_inference(model)(images) - model(images)).abs().max().item()
    log.info("%s: %d train steps in %.1f s (%.1f img/s); fused vs unfused max |diff| = %.2e",
             args.arch, args.steps, elapsed, args.steps * args.batch / elapsed, gap)
    return 0 if gap < 1e-3 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tresnet-ft", description="Fine-tune pretrained TResNet classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the published pretrained weights").set_defaults(run=_cmd_models)
    smoke = sub.add_parser("smoke", help="offline check that the model trains and fuses on this machine")
    smoke.add_argument("--arch", choices=sorted(ARCHS), default="tresnet_m", help="variant (default: tresnet_m)")
    smoke.add_argument("--steps", type=int, default=3, help="optimisation steps (default: 3)")
    smoke.add_argument("--batch", type=int, default=4, help="images per step (default: 4)")
    smoke.add_argument("--size", type=int, default=128, help="image side, a multiple of 32 (default: 128)")
    smoke.set_defaults(run=_cmd_smoke)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, WeightsUnavailableError) as err:  # user mistakes: one line
        log.error("error: %s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
