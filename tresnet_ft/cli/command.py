"""The ``tresnet-ft`` command.

    tresnet-ft fit|validate|test --recipe NAME_OR_PATH [--config more.yaml] [--model.lr ...]
    tresnet-ft recipes                       the shipped recipes and their reference results
    tresnet-ft predict CKPT PATH [PATH ...]  classify or tag files, folders or a CSV
    tresnet-ft export CKPT --format onnx     ONNX or TorchScript, verified against PyTorch
    tresnet-ft models                        the published pretrained weights
    tresnet-ft smoke                         offline check that training works on this machine

Training commands are Lightning's CLI: the recipe is the base config, later flags override it,
``--print_config`` shows the merged result, ``--help`` shows the values a command would run with.
Weights and data files the run cannot get are all listed in one error before anything slow starts.
User mistakes end with one line and exit code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import yaml

from ..errors import UserError

if TYPE_CHECKING:
    from ..training.runs import RunFolder
    from .recipe import Recipe

log = logging.getLogger("tresnet_ft")

TRAINING_COMMANDS = ("fit", "validate", "test")
TOOL_COMMANDS = ("recipes", "predict", "export", "push", "serve", "models", "smoke")
# Our own family (tresnet_ft.errors), and a bad training flag or config value (LightningCLI's
# parser raises ArgumentError). Anything else is a bug: it keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, argparse.ArgumentError)


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


def _options(args: Sequence[str]) -> Iterator[tuple[str, str]]:
    """``(--name, value)`` for every ``--name value`` / ``--name=value`` in ``args``, in order."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and "=" in arg:
            yield tuple(arg.split("=", 1))  # type: ignore[misc]
        elif arg.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            yield arg, args[i + 1]
            i += 1
        i += 1


def _read_if_file(path_or_text: str) -> tuple[str, Optional[Path]]:
    """The file's text and path, or the argument itself and None (LightningCLI's ``--config`` takes either)."""
    try:
        path = Path(path_or_text)
        return (path.read_text(), path) if path.is_file() else (path_or_text, None)
    except OSError:  # e.g. a YAML string too long for a file name
        return path_or_text, None


def _yaml_value(text: str) -> Any:
    """A flag's value as YAML, or the text itself when it is not YAML (LightningCLI judges it)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _config_value(flag: str, value: str) -> Any:
    """A ``--config`` or ``--SECTION`` argument, a file or YAML text, as data; YAML that cannot be
    read is one error line naming the file (or the text), the line, the column and the problem."""
    from .recipe import parse_yaml

    text, path = _read_if_file(value)
    shown = value if len(value) <= 60 else value[:57] + "..."
    return parse_yaml(text, f"{flag} file {path}" if path is not None else f"{flag} value {shown!r}")


# Trainer settings whose recipe value depends on the machine or on each other (recipe.resolve_trainer_settings).
RESOLVED_TRAINER_KEYS = ("accelerator", "precision", "deterministic", "benchmark")
CONFIG_SECTIONS = ("trainer", "model", "data")
HELP_FLAGS = ("-h", "--help")


def _asks_for_info(args: Sequence[str]) -> bool:
    """Whether ``args`` only ask for help or the merged config: nothing will run."""
    return any(arg in HELP_FLAGS or arg.startswith("--print_config") for arg in args)


def _user_overrides(args: Sequence[str]) -> dict[str, Any]:
    """What ``args`` set on top of the recipe, as one nested config: ``--config`` files (or YAML
    strings), whole sections (``--data FILE``) and ``--SECTION.KEY VALUE`` flags; a later one
    wins, as in LightningCLI. Read before Lightning is imported: a ``--config`` or section that is
    not YAML is reported here (one line); a value of another type is left out, for LightningCLI
    to report."""
    from .recipe import deep_merge

    overrides: dict[str, Any] = {}
    for name, value in _options(args):
        key = name[2:]
        if key == "config":
            layer = _config_value(name, value)
        elif key.split(".", 1)[0] in CONFIG_SECTIONS:  # --data FILE_OR_YAML, --data.root DIR, ...
            layer = _config_value(name, value) if key in CONFIG_SECTIONS else _yaml_value(value)
            for part in reversed(key.split(".")):
                layer = {part: layer}
        else:
            continue
        if isinstance(layer, dict):
            overrides = deep_merge(overrides, layer)
    return overrides


def _user_trainer_settings(args: Sequence[str]) -> dict[str, Any]:
    """The ``RESOLVED_TRAINER_KEYS`` that ``args`` sets (see :func:`_user_overrides`)."""
    trainer = _user_overrides(args).get("trainer")
    return {k: v for k, v in trainer.items() if k in RESOLVED_TRAINER_KEYS} if isinstance(trainer, dict) else {}


def _resolve_machine_settings(recipe: Recipe, rest: list[str]) -> tuple[Recipe, list[str], list[str]]:
    """The recipe with ``precision: auto`` (and ``benchmark`` under ``deterministic``) resolved for
    this machine and the user's flags; the flags with a ``--trainer.precision`` Lightning accepts;
    one line per decision."""
    from .recipe import deep_merge, resolve_trainer_settings

    rest, precision_flag = _pop_option(rest, "--trainer.precision")  # may be "auto": Lightning would refuse it
    user_trainer = _user_trainer_settings(rest)
    if precision_flag is not None:
        user_trainer["precision"] = _yaml_value(precision_flag)
    resolved, notes = resolve_trainer_settings(recipe.config.get("trainer") or {}, user_trainer)
    if "precision" in user_trainer:  # the user's word is the last one, as it was on their line
        rest = rest + [f"--trainer.precision={resolved['precision']}"]
    return dataclasses.replace(recipe, config=deep_merge(recipe.config, {"trainer": resolved})), rest, notes


def _split_training_argv(argv: Sequence[str]) -> tuple[str, Recipe, Optional[str], Optional[str], list[str]]:
    """``fit --recipe R [flags]`` -> the command, the recipe, ``--logger``, ``--ckpt_path`` and
    the flags left for LightningCLI."""
    from .recipe import load_recipe

    command, rest = argv[0], list(argv[1:])
    rest, recipe_name = _pop_option(rest, "--recipe")
    rest, logger_names = _pop_option(rest, "--logger")
    rest, ckpt_path = _pop_option(rest, "--ckpt_path")
    return command, load_recipe(recipe_name or "quickstart"), logger_names, ckpt_path, rest


def check_training_inputs(argv: Sequence[str]) -> None:
    """Raise one error listing every weights or data file that ``fit --recipe R [flags]`` needs
    and cannot get now (see :mod:`tresnet_ft.preflight`). Call it first: it imports no Lightning,
    so an offline run fails within seconds. Help and ``--print_config`` need no files."""
    from .preflight import check_inputs
    from .recipe import deep_merge

    _, recipe, _, ckpt_path, rest = _split_training_argv(argv)
    if not _asks_for_info(rest):
        check_inputs(deep_merge(recipe.config, _user_overrides(rest)), weights=ckpt_path is None)


def _runs_root(recipe: Recipe, rest: Sequence[str]) -> Path:
    """Where this command's run folders go and ``--ckpt_path last|best`` looks:
    ``trainer.default_root_dir`` of the recipe, then of the user's ``--config`` files and flags
    (:func:`tresnet_ft.training.loggers.runs_root` turns the default into ``./runs``)."""
    from ..training.loggers import runs_root
    from .recipe import deep_merge

    user_trainer = _user_overrides(rest).get("trainer")
    trainer = deep_merge(recipe.config.get("trainer") or {}, user_trainer if isinstance(user_trainer, dict) else {})
    return runs_root(trainer.get("default_root_dir"))


def _resolve_checkpoint(command: str, ckpt_path: Optional[str], run_name: str, root: Path,
                        report: bool) -> tuple[Optional[str], Optional[RunFolder]]:
    """``--ckpt_path``'s file (``last``/``best``: the newest run of ``run_name`` under ``root``
    that has one) and, for ``fit`` from a checkpoint inside a run folder, the run it continues.
    ``report``: log which checkpoint and run were chosen."""
    from ..training.runs import CHECKPOINT_ALIASES, find_checkpoint, run_of_checkpoint

    alias = ckpt_path if ckpt_path in CHECKPOINT_ALIASES else None
    if alias is not None:
        ckpt_path = str(find_checkpoint(root, run_name, alias))
    run = run_of_checkpoint(ckpt_path) if ckpt_path and command == "fit" else None
    # With an alias the user did not name the run: say which one it was, and why that one.
    why = f" (--ckpt_path {alias}: the newest run of {run_name!r} under {root} with a {alias}.ckpt)" if alias else ""
    if report and run is not None:
        log.info("Resuming run %s from %s%s", run.path, ckpt_path, why)
    elif report and alias is not None:
        log.info("Checkpoint: %s%s", ckpt_path, why)
    return ckpt_path, run


def training_args(argv: Sequence[str]) -> tuple[list[str], str]:
    """Turn ``fit --recipe R [flags]`` into LightningCLI arguments with the merged recipe first.

    Also maps ``--logger csv,tensorboard,wandb`` onto ``--trainer.logger`` entries writing into
    ``<default_root_dir>/<recipe>/version_<N>`` (``--trainer.default_root_dir``, from the recipe, a
    ``--config`` file or a flag; ``runs`` by default), and ``--ckpt_path last|best`` onto the newest
    such checkpoint of the recipe's runs there. A new run claims its ``version_<N>`` folder here, by
    creating it, so runs started together never share one (DDP workers reuse the folder of the
    process that started them: :func:`tresnet_ft.training.runs.new_run_folder`). ``fit`` from a
    checkpoint inside a run folder continues that run: same ``version_<N>`` folder, so its
    ``last.ckpt``, metrics and plots carry on. ``precision: auto`` (the recipes' default, or
    ``--trainer.precision auto``) becomes the best precision for this machine, logged with the
    reason; an explicit precision is kept. Returns the arguments and the run name.
    """
    args, run_name, _ = _training_args(argv)
    return args, run_name


def _training_args(argv: Sequence[str]) -> tuple[list[str], str, list[Path]]:
    """:func:`training_args`, and the folders this call created for a new run, deepest first: the
    claimed ``version_<N>`` and those above it that were not there (none: resumed, or nothing runs)."""
    from .recipe import write_merged

    command, recipe, logger_option, ckpt_path, rest = _split_training_argv(argv)
    # Lightning first: importing it sets PYTORCH_NVML_BASED_CUDA_CHECK, so asking whether CUDA is
    # there creates no CUDA state that would stop Lightning from forking DDP workers later.
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from ..training import loggers
    from ..training.runs import new_run_folder, starts_the_run

    recipe, rest, notes = _resolve_machine_settings(recipe, rest)
    will_run = not _asks_for_info(rest)  # help and --print_config run nothing
    report = getattr(rank_zero_only, "rank", 0) == 0 and will_run  # DDP workers re-run this
    if report:
        for note in notes:
            log.info(note)
    root = _runs_root(recipe, rest)
    ckpt_path, resumed = _resolve_checkpoint(command, ckpt_path, recipe.name, root, report)
    config_dir = Path(tempfile.mkdtemp(prefix="tresnet-ft-recipe-"))
    args = [command, "--config", str(write_merged(recipe, config_dir))]
    names = loggers.logger_names(logger_option)
    # Claimed last, once nothing here can fail; only by a command that runs.
    missing = _missing_folders(root / recipe.name)
    run = resumed or new_run_folder(root, recipe.name, os.environ, claim=will_run)
    args += ["--trainer.logger", loggers.logger_config(names, run)]
    if ckpt_path:
        args += ["--ckpt_path", ckpt_path]
    # Last, so the Trainer's default_root_dir (checkpoints and plots without a logger, the saved
    # config.yaml) is the folder resolved above, also when $TRESNET_FT_RUNS replaced the default.
    args += rest + [f"--trainer.default_root_dir={root}"]
    # A DDP worker shares the folder its first process claimed: only that process may give it back.
    claimed = resumed is None and will_run and starts_the_run(os.environ)
    return args, recipe.name, [run.path, *missing] if claimed else []


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its parents up to the first that exists, deepest first (those not there yet)."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _release_unused(created: list[Path]) -> None:
    """Remove the folders a run that failed before writing anything created (``created``, deepest
    first), so that a mistyped setting leaves no empty ``version_<N>`` (or ``runs/``) behind."""
    for folder in created:
        try:
            folder.rmdir()  # fails unless empty: whatever the run wrote stays, and so does all above it
        except OSError:
            return


TRAINING_USAGE = ("tresnet-ft {command} [--recipe NAME|FILE] [--logger LIST] [--ckpt_path last|best|FILE] "
                  "[--config FILE] [--SECTION.KEY VALUE ...]")
# Ours first: LightningCLI's own list below runs to hundreds of lines and knows none of these.
TRAINING_HELP = """Every setting listed below can be changed with --SECTION.KEY VALUE. The defaults shown are
what this command would run with: recipe {recipe!r}, then your --config files and flags.

tresnet-ft options (before LightningCLI's own):
  --recipe NAME|FILE    a shipped recipe (tresnet-ft recipes lists them) or a YAML file;
                        default: quickstart
  --logger LIST         comma-separated, of csv, tensorboard, wandb; default: csv,tensorboard
  --ckpt_path last|best|FILE
                        last or best: the newest such checkpoint of this recipe's runs (under
                        --trainer.default_root_dir); fit from a checkpoint of a run continues
                        that run's folder
  --trainer.default_root_dir DIR
                        where runs go: DIR/<recipe>/version_<N>/ holds checkpoints, metrics and
                        plots; default: runs ($TRESNET_FT_RUNS when set)
  --print_config        show the merged settings and stop

examples:
  tresnet-ft fit --recipe quickstart                     offline demo, minutes on a CPU
  tresnet-ft fit --recipe folder --data.root photos/ --trainer.max_epochs 10 --logger csv,wandb
  {resume_example}"""
RESUME_EXAMPLES = {
    "fit": "tresnet-ft fit --recipe folder --data.root photos/ --ckpt_path last   continue the newest run",
    "validate": "tresnet-ft validate --recipe folder --data.root photos/ --ckpt_path best",
    "test": "tresnet-ft test --recipe folder --data.root photos/ --ckpt_path best",
}


def _run_training(argv: Sequence[str]) -> int:
    check_training_inputs(argv)
    args, run_name, claimed = _training_args(argv)
    from .lightning_cli import run_cli

    command = argv[0]
    try:
        run_cli(args, run_name, usage=TRAINING_USAGE.format(command=command),
                description=TRAINING_HELP.format(recipe=run_name, resume_example=RESUME_EXAMPLES[command]))
    except BaseException:  # SystemExit too: a bad flag ends LightningCLI's parser that way
        _release_unused(claimed)
        raise
    _close_process_group()
    return 0


def _close_process_group() -> None:
    """End a multi-process run's process group before the command returns: Lightning leaves it
    open, and a gloo worker exiting with it open can abort (SIGABRT) after a finished run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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
        from .tools import run_tool

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
