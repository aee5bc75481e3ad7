"""The ``tresnet-ft`` commands that are not training: recipes, predict, export, models, smoke."""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Sequence

import torch

log = logging.getLogger("tresnet_ft")


def _cmd_recipes(_: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .recipe import available_recipes, load_recipe

    table = Table(title="Recipes (tresnet-ft fit --recipe NAME)")
    for column in ("recipe", "description", "reference result"):
        table.add_column(column)
    for name in available_recipes():
        recipe = load_recipe(name)
        table.add_row(name, recipe.description, recipe.reference)
    Console().print(table)
    return 0


def _cmd_models(_: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .models import PRETRAINED

    table = Table(title="Published TResNet weights (create_model(name, pretrained=True))")
    for column in ("name", "hub id", "input", "classes", "ImageNet top-1"):
        table.add_column(column)
    for name, cfg in PRETRAINED.items():
        top1 = f"{cfg.top1:.1f}" if cfg.top1 else "-"
        table.add_row(name, cfg.hub_id, str(cfg.input_size), str(cfg.num_classes), top1)
    Console().print(table)
    return 0


def _cmd_smoke(args: argparse.Namespace) -> int:
    """A few optimisation steps on random images, then fused-vs-unfused agreement."""
    from .models import create_model, fuse_for_inference

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


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import predict_to_file

    summary = predict_to_file(args.checkpoint, args.paths, Path(args.output), top_k=args.top_k,
                              threshold=args.threshold, batch_size=args.batch_size)
    log.info("%s", summary)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_model

    report = export_model(args.checkpoint, args.format, Path(args.output))
    log.info("%s", report)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .models import ARCHS

    parser = argparse.ArgumentParser(
        prog="tresnet-ft", description="Fine-tune pretrained TResNet classifiers.",
        epilog="Training: tresnet-ft fit|validate|test --recipe NAME [--help for every option].")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (("fit", "train with a recipe (Lightning CLI; see tresnet-ft fit --help)"),
                       ("validate", "evaluate a checkpoint on the validation split"),
                       ("test", "evaluate a checkpoint on the test split")):
        sub.add_parser(name, help=text, add_help=False)
    sub.add_parser("recipes", help="list the recipes with their reference results").set_defaults(run=_cmd_recipes)
    sub.add_parser("models", help="list the published pretrained weights").set_defaults(run=_cmd_models)

    predict = sub.add_parser("predict", help="classify or tag images with a trained checkpoint")
    predict.add_argument("checkpoint", help="a checkpoint written by tresnet-ft fit (e.g. runs/NAME/.../best.ckpt)")
    predict.add_argument("paths", nargs="+", help="image files, folders (searched recursively) or a CSV/JSONL")
    predict.add_argument("-o", "--output", default="predictions.csv", help="output .csv or .jsonl (default: %(default)s)")
    predict.add_argument("--top-k", type=int, default=5, help="single-label: labels per image (default: %(default)s)")
    predict.add_argument("--threshold", type=float, default=None,
                         help="multi-label: one threshold for all tags (default: the tuned per-class ones)")
    predict.add_argument("--batch-size", type=int, default=32, help="images per batch (default: %(default)s)")
    predict.set_defaults(run=_cmd_predict)

    export = sub.add_parser("export", help="export a checkpoint to ONNX or TorchScript, verified")
    export.add_argument("checkpoint", help="a checkpoint written by tresnet-ft fit")
    export.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="(default: %(default)s)")
    export.add_argument("-o", "--output", required=True, help="output file, e.g. model.onnx")
    export.set_defaults(run=_cmd_export)

    smoke = sub.add_parser("smoke", help="offline check that the model trains and fuses on this machine")
    smoke.add_argument("--arch", choices=sorted(ARCHS), default="tresnet_m", help="variant (default: %(default)s)")
    smoke.add_argument("--steps", type=int, default=3, help="optimisation steps (default: %(default)s)")
    smoke.add_argument("--batch", type=int, default=4, help="images per step (default: %(default)s)")
    smoke.add_argument("--size", type=int, default=128, help="image side, a multiple of 32 (default: %(default)s)")
    smoke.set_defaults(run=_cmd_smoke)
    return parser


def run_tool(argv: Sequence[str]) -> int:
    """Parse ``argv`` (without the program name) and run the chosen non-training command."""
    args = build_parser().parse_args(list(argv))
    return args.run(args)
