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
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, WeightsUnavailableError)


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

    Also maps ``--logger csv,tensorboard,wandb`` onto ``--trainer.logger`` entries. Returns the
    arguments and the run name (the recipe's).
    """
    from .recipe import load_recipe, write_merged

    command, rest = argv[0], list(argv[1:])
    rest, recipe_name = _pop_option(rest, "--recipe")
    rest, logger_names = _pop_option(rest, "--logger")
    recipe = load_recipe(recipe_name or "quickstart")
    config_dir = Path(tempfile.mkdtemp(prefix="tresnet-ft-recipe-"))
    args = [command, "--config", str(write_merged(recipe, config_dir))]
    args += _logger_args(logger_names or "csv,tensorboard", recipe.name)
    return args + rest, recipe.name


def _logger_args(names: str, run_name: str) -> list[str]:
    from .loggers import logger_config

    return ["--trainer.logger", logger_config([n.strip() for n in names.split(",") if n.strip()], run_name)]


def _run_training(argv: Sequence[str]) -> int:
    from .lightning_cli import run_cli

    args, run_name = training_args(argv)
    run_cli(args, run_name)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``tresnet-ft`` console script."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in TRAINING_COMMANDS:
            return _run_training(argv)
        from .tools_cli import run_tool

        return run_tool(argv)
    except USER_ERRORS as err:
        if os.environ.get("TRESNET_FT_DEBUG"):
            raise
        log.error("error: %s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
