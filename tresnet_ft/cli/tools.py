"""The ``tresnet-ft`` commands that are not training: recipes, predict, export, models, smoke."""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence, TextIO

import torch
from rich.console import Console
from rich.table import Table
from ..errors import InvalidValueError

log = logging.getLogger("tresnet_ft")


def print_listing(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], copyable: int,
                  stream: TextIO | None = None) -> None:
    """Print ``rows`` so that no cell is ever cut short; the first ``copyable`` columns hold names
    the user copies into commands (recipe names, weight names, hub ids).

    A terminal wide enough for the whole table gets a rich table (copyable columns kept on one line,
    the others wrapped). A narrower terminal gets plain aligned columns, which it may wrap but never
    cuts; anything else (a pipe, a file) gets tab-separated lines under a header row, for ``cut -f``.
    """
    stream = stream or sys.stdout
    if not stream.isatty():
        for row in [columns, *rows]:
            stream.write("\t".join(row) + "\n")
        return
    console = Console(file=stream)
    if _narrowest_table(columns, rows, copyable) <= console.width:
        table = Table(title=title)
        for index, column in enumerate(columns):
            table.add_column(column, no_wrap=index < copyable)
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    widths = [max(len(row[index]) for row in [columns, *rows]) for index in range(len(columns))]
    stream.write(title + "\n")
    for row in [columns, *rows]:
        stream.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() + "\n")


def _narrowest_table(columns: Sequence[str], rows: Sequence[Sequence[str]], copyable: int) -> int:
    """Characters a rich table needs when copyable columns keep whole cells and the others wrap at
    word boundaries (rich's default box: one border per column plus one, one space either side)."""
    widths = [max(len(row[index]) if index < copyable else max(map(len, row[index].split() or [""]))
                  for row in [columns, *rows])
              for index in range(len(columns))]
    return sum(widths) + 3 * len(columns) + 1


def _cmd_recipes(_: argparse.Namespace) -> int:
    from .recipe import available_recipes, load_recipe

    recipes = [load_recipe(name) for name in available_recipes()]
    print_listing("Recipes (tresnet-ft fit --recipe NAME; add the last column to read the data from the Hugging "
                  "Face hub, with pip install \"tresnet-ft[datasets]\": docs/RECIPES.md)",
                  ("recipe", "description", "reference result", HUB_COLUMN),
                  [(recipe.name, recipe.description, recipe.reference, hub_data_args(recipe.hub) if recipe.hub else "-")
                   for recipe in recipes], copyable=1)
    return 0


HUB_COLUMN = "data from the Hugging Face hub"


def hub_data_args(hub: dict) -> str:
    """The ``--data.*`` arguments that read a recipe's data from its hub copy, quoted for a shell."""
    args = f"--data.dataset hf --data.root {hub['root']}"
    if hub.get("dataset_options"):
        args += f" --data.dataset_options '{json.dumps(hub['dataset_options'])}'"
    return args


def _cmd_models(_: argparse.Namespace) -> int:
    from ..models import PRETRAINED

    rows = [(name, cfg.hub_id, str(cfg.input_size), str(cfg.num_classes), f"{cfg.top1:.1f}" if cfg.top1 else "-")
            for name, cfg in PRETRAINED.items()]
    print_listing("Published TResNet weights (create_model(name, pretrained=True))",
                  ("name", "hub id", "input", "classes", "ImageNet top-1"), rows, copyable=2)
    return 0


SMOKE_FUSE_TOLERANCE = 1e-3  # fused and unfused logits agree to ~1e-7 in float32; 1e-3 means broken


def _cmd_smoke(args: argparse.Namespace) -> int:
    """A few optimisation steps on random images, then fused-vs-unfused agreement; ends with one
    ``PASS: ...`` line (exit 0) or ``FAIL: ...`` line saying what broke and what to do (exit 1)."""
    from .command import USER_ERRORS

    if args.steps < 1 or args.batch < 1:
        raise InvalidValueError(f"Expected --steps and --batch to be at least 1, but got {args.steps} and {args.batch}.")
    started = time.perf_counter()
    try:
        losses, images_per_second, gap = _smoke_train_and_fuse(args)
    except USER_ERRORS:
        raise
    except Exception as error:
        if os.environ.get("TRESNET_FT_DEBUG"):
            raise
        log.error("FAIL: %s did not run on this machine (%s: %s). %s", args.arch, type(error).__name__,
                  str(error).splitlines()[0] if str(error) else "no message", _SMOKE_HELP)
        return 1
    problem = _smoke_problem(losses, gap)
    if problem:
        log.error("FAIL: %s. %s", problem, _SMOKE_HELP)
        return 1
    log.info("PASS: %s trains (%d steps on random %d px images, loss %.3f -> %.3f, %.1f img/s) and its "
             "fused inference copy matches (fused vs unfused max |diff| %.1e); %.1f s in all.", args.arch,
             len(losses), args.size, losses[0], losses[-1], images_per_second, gap, time.perf_counter() - started)
    return 0


_SMOKE_HELP = (f"This is a broken install or a bug, not a setting: run TRESNET_FT_DEBUG=1 tresnet-ft smoke and "
               f"report its output with your torch version ({torch.__version__}).")


def _smoke_train_and_fuse(args: argparse.Namespace) -> tuple[list[float], float, float]:
    """Train ``args.steps`` SGD steps on one random batch; returns the losses, the images per
    second, and the max |logit difference| between the fused and the unfused model."""
    from ..models import create_model, fuse_for_inference

    torch.manual_seed(0)
    model = create_model(args.arch, num_classes=4).train()
    images = torch.rand(args.batch, 3, args.size, args.size)
    labels = torch.arange(args.batch) % 4
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses, start = [], time.perf_counter()
    for step in range(args.steps):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        log.info("step %d/%d  loss %.4f", step + 1, args.steps, losses[-1])
    images_per_second = args.steps * args.batch / (time.perf_counter() - start)
    model.eval()
    with torch.inference_mode():
        gap = (fuse_for_inference(model)(images) - model(images)).abs().max().item()
    return losses, images_per_second, gap


def _smoke_problem(losses: list[float], gap: float) -> str | None:
    """What the smoke run's numbers say is broken, or None."""
    if not all(math.isfinite(loss) for loss in losses):
        return f"the loss is not finite ({', '.join(f'{loss:.3g}' for loss in losses)})"
    # Four images memorised by SGD: from step 2 on, the loss always falls unless no update arrives.
    if len(losses) > 1 and not losses[-1] < losses[0]:
        return f"the loss did not fall over {len(losses)} steps ({losses[0]:.4g} -> {losses[-1]:.4g})"
    if not gap < SMOKE_FUSE_TOLERANCE:
        return (f"the fused inference model differs from the trained one by up to {gap:.3g} "
                f"(allowed {SMOKE_FUSE_TOLERANCE:g}), so predict and export would give wrong outputs")
    return None


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..inference.predict import predict_to_file

    # predict_to_file logs what it wrote and which files it skipped
    predict_to_file(args.checkpoint, args.paths, Path(args.output), top_k=args.top_k,
                    threshold=args.threshold, batch_size=args.batch_size, runtime=args.runtime)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ..inference.export import export_model

    if args.format == "hf":
        return _cmd_export_hub_folder(args)
    if not args.int8:
        export_model(args.checkpoint, args.format, Path(args.output))  # logs what it wrote and the check
        return 0
    from ..inference.quantize import parse_calibration, quantize_model

    if args.format != "onnx":
        raise InvalidValueError(f"--int8 quantises an ONNX export, but --format {args.format} was given. "
                                "Fix: --format onnx --int8.")
    quantize_model(args.checkpoint, Path(args.output), calibration=parse_calibration(args.calibration),
                   max_drop=args.max_drop, data_root=args.data_root)  # logs both metrics and what it wrote
    return 0


def _cmd_export_hub_folder(args: argparse.Namespace) -> int:
    from ..inference.hub_export import export_hub_folder

    if args.int8:
        raise InvalidValueError("--int8 quantises an ONNX export, but --format hf writes the PyTorch weights in "
                                "timm's hub layout. Fix: --format onnx --int8, or drop --int8.")
    export_hub_folder(args.checkpoint, Path(args.output))  # logs what it wrote and how to load it
    return 0


def _add_export_parser(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export", help="export a checkpoint to ONNX, TorchScript or timm's hub layout, verified")
    export.add_argument("checkpoint", help="a checkpoint written by tresnet-ft fit")
    export.add_argument("--format", choices=("onnx", "torchscript", "hf"), default="onnx",
                        help="onnx or torchscript: one model file plus a JSON sidecar; hf: a folder in timm's "
                        "Hugging Face hub layout (config.json, model.safetensors, model card), loadable with "
                        "timm.create_model('local-dir:DIR') and uploadable with tresnet-ft push "
                        "(default: %(default)s)")
    export.add_argument("-o", "--output", required=True, help="output file (model.onnx, model.pt) or, for hf, a folder")
    export.add_argument("--int8", action="store_true",
                        help="static int8 quantisation (ONNX Runtime, QDQ, per-channel weights), kept only if its "
                        "validation top-1 (or mAP) is within --max-drop of the fp32 model's")
    export.add_argument("--calibration", default="256", metavar="N|FOLDER",
                        help="--int8: calibrate on N training images of the checkpoint's dataset, or on the "
                        "images in FOLDER (default: %(default)s)")
    export.add_argument("--max-drop", type=float, default=1.0, metavar="POINTS",
                        help="--int8: the largest drop in validation top-1 (or mAP), in points, that is accepted "
                        "(default: %(default)s)")
    export.add_argument("--data-root", default=None, metavar="PATH",
                        help="--int8: the checkpoint's dataset (its folder or CSV/JSONL, or the data root of a "
                        "named dataset; default: $TRESNET_FT_DATA for named datasets)")
    export.set_defaults(run=_cmd_export)


def build_parser() -> argparse.ArgumentParser:
    from ..models import ARCHS

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

    predict = sub.add_parser("predict", help="classify or tag images with a trained checkpoint or ONNX export")
    predict.add_argument("checkpoint", help="a checkpoint written by tresnet-ft fit (e.g. runs/NAME/.../best.ckpt), "
                         "or an .onnx written by tresnet-ft export (its .onnx.json sidecar next to it)")
    predict.add_argument("paths", nargs="+", help="image files, folders (searched recursively) or a CSV/JSONL")
    predict.add_argument("-o", "--output", default="predictions.csv", help="output .csv or .jsonl (default: %(default)s)")
    predict.add_argument("--top-k", type=int, default=5, help="single-label: labels per image (default: %(default)s)")
    predict.add_argument("--threshold", type=float, default=None,
                         help="multi-label: one threshold for all tags (default: the tuned per-class ones)")
    predict.add_argument("--batch-size", type=int, default=32, help="images per batch (default: %(default)s)")
    predict.add_argument("--runtime", choices=("auto", "torch", "onnxruntime"), default="auto",
                         help="torch: the fused PyTorch model (CPU or GPU); onnxruntime: ONNX Runtime on the CPU "
                         "(a checkpoint is exported once and cached); auto: onnxruntime for an .onnx, else torch "
                         "(default: %(default)s)")
    predict.set_defaults(run=_cmd_predict)

    _add_export_parser(sub)

    from .hub_commands import add_push_parser
    from .serve_command import add_serve_parser

    add_push_parser(sub)
    add_serve_parser(sub)

    smoke = sub.add_parser("smoke", help="offline check that the model trains and fuses on this machine")
    smoke.add_argument("--arch", choices=sorted(ARCHS), default="tresnet_m", help="variant (default: %(default)s)")
    smoke.add_argument("--steps", type=int, default=3, help="optimisation steps (default: %(default)s)")
    smoke.add_argument("--batch", type=int, default=4, help="images per step (default: %(default)s)")
    smoke.add_argument("--size", type=int, default=128, help="image side, a multiple of 4, at least 32 (default: %(default)s)")
    smoke.set_defaults(run=_cmd_smoke)
    return parser


def run_tool(argv: Sequence[str]) -> int:
    """Parse ``argv`` (without the program name) and run the chosen non-training command."""
    args = build_parser().parse_args(list(argv))
    return args.run(args)
