"""The ``tresnet-ft`` command.

    tresnet-ft fit|validate|test --recipe NAME_OR_PATH [--config more.yaml] [--model.lr ...]
    tresnet-ft recipes                       the shipped recipes and their reference results
    tresnet-ft predict CKPT PATH [PATH ...]  classify or tag files, folders or a CSV
    tresnet-ft export CKPT --format onnx     ONNX or TorchScript, verified against PyTorch
    tresnet-ft models                        the published pretrained weights
    tresnet-ft smoke                         offline check that training works on this machine

Training commands are Lightning's CLI: the recipe is the base config, later flags override it,
``--print_config`` shows the merged result. User mistakes end with one line and exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from .models import WeightsUnavailableError

log = logging.getLogger("tresnet_ft")

TRAINING_COMMANDS = ("fit", "validate", "test")
TOOL_COMMANDS = ("recipes", "predict", "export", "models", "smoke")
# FloatingPointError: a NaN/inf loss (its message names the step and the likely causes).
# ArgumentError: a bad training flag or config value (LightningCLI's parser raises it).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, WeightsUnavailableError,
                                                FloatingPointError, argparse.ArgumentError)


def _pop_option(args: list[str], name: str) -> tuple[list[str], Optional[str]]:
    """Remove ``--name VALUE`` / ``--name=VALUE`` from ``args``; return the rest and the value."""
    rest, value, i = [], None, 0
    while i < len(args):
        arg = args[i]
        if arg == name and i + 1 < len(args):
            value, i = args[i + 1], i + 2
            continue
        if arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return rest, value


def training_args(argv: Sequence[str]) -> tuple[list[str], str]:
    """Turn ``fit --recipe R [flags]`` into LightningCLI arguments with the merged recipe first.

    Also maps ``--logger csv,tensorboard,wandb`` onto ``--trainer.logger`` entries, and
    ``--ckpt_path last|best`` onto the newest such checkpoint of the recipe's runs. ``fit`` from a
    checkpoint inside a run folder continues that run: same ``version_<N>`` folder, so its
    ``last.ckpt``, metrics and plots carry on. Returns the arguments and the run name.
    """
    from . import loggers
    from .recipe import load_recipe, write_merged
    from .runs import CHECKPOINT_ALIASES, find_checkpoint, run_of_checkpoint

    command, rest = argv[0], list(argv[1:])
    rest, recipe_name = _pop_option(rest, "--recipe")
    rest, logger_names = _pop_option(rest, "--logger")
    rest, ckpt_path = _pop_option(rest, "--ckpt_path")
    recipe = load_recipe(recipe_name or "quickstart")
    if ckpt_path in CHECKPOINT_ALIASES:
        ckpt_path = str(find_checkpoint(loggers.RUNS_DIR, recipe.name, ckpt_path))
    run = run_of_checkpoint(ckpt_path) if ckpt_path and command == "fit" else None
    if run is not None:
        log.info("Resuming run %s from %s", run.path, ckpt_path)
    config_dir = Path(tempfile.mkdtemp(prefix="tresnet-ft-recipe-"))
    args = [command, "--config", str(write_merged(recipe, config_dir))]
    names = [n.strip() for n in (logger_names or "csv,tensorboard").split(",") if n.strip()]
    args += ["--trainer.logger", loggers.logger_config(names, run.name if run else recipe.name,
                                                       run.save_dir if run else None,
                                                       run.version if run else None)]
    if ckpt_path:
        args += ["--ckpt_path", ckpt_path]
    return args + rest, recipe.name


def _run_training(argv: Sequence[str]) -> int:
    from .lightning_cli import run_cli

    args, run_name = training_args(argv)
    run_cli(args, run_name)
    return 0


def _show_package_logs() -> None:
    # Our messages only: Lightning prints its own, and a root handler would print them twice.
    package = logging.getLogger("tresnet_ft")
    package.setLevel(logging.INFO)
    if not any(getattr(h, "tresnet_ft", False) for h in package.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.tresnet_ft = True
        package.addHandler(handler)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``tresnet-ft`` console script."""
    _show_package_logs()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in TRAINING_COMMANDS:
            return _run_training(argv)
        from .tools_cli import run_tool

        return run_tool(argv)
    except Exception as err:
        if not _is_user_error(err) or os.environ.get("TRESNET_FT_DEBUG"):
            raise
        hint = ""
        if isinstance(err, argparse.ArgumentError) and argv and argv[0] in TRAINING_COMMANDS:
            hint = f" (tresnet-ft {argv[0]} --help lists the options)"
        log.error("error: %s%s", err, hint)
        return 2


def _is_user_error(err: BaseException) -> bool:
    """Our own user-mistake errors, and Lightning's refusals of a trainer configuration."""
    if isinstance(err, USER_ERRORS):
        return True
    if "lightning" not in sys.modules:  # nothing of Lightning ran, so it cannot be its error
        return False
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    return isinstance(err, MisconfigurationException)


if __name__ == "__main__":
    sys.exit(main())
