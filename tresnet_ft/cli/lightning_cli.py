"""LightningCLI wiring: the classifier, the DataModule, and the links between them."""
from __future__ import annotations

import argparse
import difflib
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Sequence

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger

from ..training.model_summary import CompactModelSummary
from ..training.progress import FitReport, ThroughputProgressBar
from ..training.checkpoint_io import SafeCheckpointIO
from ..training.lightning_private import LightningCLIWithHooks, parser_option_strings, wandb_is_offline
from ..classifier.checkpoint import trusted_hyperparameters
from ..data import ImageDataModule
from ..models.weights import read_checkpoint
from ..training.module import TResNetClassifier

log = logging.getLogger("tresnet_ft")

# We always pass the parsed recipe as `args`; Lightning's reminder that sys.argv also holds flags
# is aimed at a different mistake and would print a page-wide line on every run.
warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
# Raised inside Lightning's own batch handling with torch >= 2.10; nothing a user can act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")

# Lightning lines that say nothing about the run: adverts for its cloud packages, and the notes
# that our checkpoint callbacks and model summary replace the Trainer's defaults (by design).
NOISE_PREFIXES = ("💡 Tip:", "The following callbacks returned in `LightningModule.configure_callbacks`",
                  "Trainer already configured with model summary callbacks")


def _drop_noise(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(NOISE_PREFIXES)


def _quiet_lightning() -> None:
    for handler in logging.getLogger("lightning.pytorch").handlers:
        if _drop_noise not in handler.filters:
            handler.addFilter(_drop_noise)


HELP_FLAGS = ("-h", "--help")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help, except that a description keeps its line breaks (options, examples)."""


class TResNetCLI(LightningCLIWithHooks):
    """Lightning's CLI with the data → model links, so nothing is typed twice."""

    model_flags: frozenset[str] = frozenset()  # the settings given as --model.KEY flags (parse_arguments)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {name: spec for name, spec in LightningCLI.subcommands().items()
                if name in ("fit", "validate", "test")}

    def parse_arguments(self, parser: Any, args: Any) -> None:
        self.model_flags = frozenset(_model_flags(args))
        if isinstance(args, list) and set(HELP_FLAGS) & set(args):
            self._show_values_as_defaults(parser, args)
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as err:
            command = args[0] if isinstance(args, list) and args else None
            subparser = self.subcommand_parser(command)
            raise _with_suggestion(err, parser if subparser is None else subparser) from None

    def _show_values_as_defaults(self, parser: Any, args: list[str]) -> None:
        """Make ``--help`` list what this command would run with (the recipe, then the user's
        configs and flags) as each option's default, instead of the classes' own defaults."""
        subparser = self.subcommand_parser(args[0])
        if subparser is None:
            return
        without_help = [arg for arg in args if arg not in HELP_FLAGS]
        configs_only = args[:1]
        for flag, value in zip(args, args[1:]):
            if flag == "--config":
                configs_only += [flag, value]
        for candidate in (without_help, configs_only):  # a bad flag must not hide the recipe's values
            try:
                values = parser.parse_args(candidate)[args[0]]
            except argparse.ArgumentError:
                continue
            flat = vars(values.clone().as_flat())
            flat.pop("config", None)  # ActionConfigFile takes no default
            flat.pop("__path__", None)
            subparser.set_defaults(flat)
            return

    def load_checkpoint_hyperparameters(self) -> None:
        """Restore the model settings saved in ``--ckpt_path`` that a checkpoint may set.

        Replaces Lightning's step, which merges every saved hyperparameter over the command line:
        a crafted checkpoint's ``pretrained`` would then make the run download a URL or read any
        file. Only :func:`trusted_hyperparameters` come from the checkpoint, read by
        :func:`read_checkpoint` (no unpickling, bounded size, one-line errors), and a setting the
        user gave as a ``--model.KEY`` flag keeps the user's value (recipe and ``--config`` values
        do not: the checkpoint restores what its own run used).
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():  # as Lightning: the Trainer reports a missing file
            return
        checkpoint = read_checkpoint(ckpt_path)
        saved = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
        restored, left_out = trusted_hyperparameters(saved)
        if left_out:
            log.debug("Not restored from %s: %s (a checkpoint may not name weights, files or code).",
                      ckpt_path, ", ".join(left_out))
        restored = {key: value for key, value in restored.items() if key not in self.model_flags}
        if restored:
            self.config = self.parser.parse_object({subcommand: {"model": restored}}, self.config)

    def build_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        # Atomic checkpoint writes and safe reads, unless the user chose plugins. Added here, not
        # as a trainer default, so the saved config.yaml stays plain YAML.
        if config.get("plugins") is None:
            config["plugins"] = [SafeCheckpointIO()]
        # The throughput bar and the compact summary are defaults; --trainer.enable_progress_bar false
        # and --trainer.enable_model_summary false must not clash with them.
        turned_off = tuple(kind for flag, kind in (("enable_progress_bar", ProgressBar),
                                                   ("enable_model_summary", ModelSummary))
                           if config.get(flag) is False)
        if turned_off:
            defaults = [cb for cb in self.trainer_defaults.get("callbacks", []) if not isinstance(cb, turned_off)]
            self.trainer_defaults = {**self.trainer_defaults, "callbacks": defaults}
        return super().build_trainer(config, callbacks)

    def add_arguments_to_parser(self, parser: Any) -> None:
        # Known only once the data is described (folder/CSV: by reading the files).
        for key in ("num_classes", "classes", "task"):
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")
        # The DataModule's EvalPreprocessing (from --data.image_size, --data.eval_crop, --data.mean,
        # --data.std), passed as the plain dict the model's hparams keep: Lightning records linked
        # values in hparams as they arrive, and checkpoints must stay weights_only-readable.
        parser.link_arguments("data.preprocessing", "model.preprocessing",
                              compute_fn=lambda preprocessing: preprocessing.to_dict(), apply_on="instantiate")


def _model_flags(args: Any) -> set[str]:
    """The model settings ``args`` names as flags: ``lr`` for ``--model.lr 0.1`` or ``--model.lr=0.1``,
    ``head_args`` for ``--model.head_args.embed_dim 64``."""
    prefix = "--model."
    return {arg[len(prefix):].split("=", 1)[0].split(".", 1)[0]
            for arg in (args if isinstance(args, list) else []) if isinstance(arg, str) and arg.startswith(prefix)}


def _with_suggestion(err: argparse.ArgumentError, parser: Any) -> argparse.ArgumentError:
    """``err`` with "did you mean --trainer.max_epochs?" when an unrecognized flag is a near miss."""
    message = str(err)
    if not message.startswith("unrecognized arguments:"):
        return err
    known = [option for option in parser_option_strings(parser) if option.startswith("--")]
    for flag in message.split()[2:]:
        close = difflib.get_close_matches(flag.split("=")[0], known, n=1, cutoff=0.85) if flag.startswith("--") else []
        if close:
            return argparse.ArgumentError(None, f"{message}; did you mean {close[0]}?")
    return err


def _parser_kwargs(command: Optional[str], usage: Optional[str], description: Optional[str]) -> dict[str, Any]:
    # No abbreviations: argparse would take --trainer.max_epoch (a typo) for --trainer.max_epochs.
    strict = {"allow_abbrev": False}
    per_command = {name: dict(strict) for name in TResNetCLI.subcommands()}
    if command in per_command:
        per_command[command].update({k: v for k, v in (("usage", usage), ("description", description)) if v})
    # A bad flag raises (one line from tresnet_ft.cli.main), not a page of usage.
    return {"default_env": False, "exit_on_error": False, "formatter_class": _HelpFormatter, **strict, **per_command}


def run_cli(args: Sequence[str], run_name: str, run: bool = True, usage: Optional[str] = None,
            description: Optional[str] = None) -> TResNetCLI:
    """Run ``fit|validate|test`` with LightningCLI arguments ``args``; report where things went.

    With ``run=False`` the model, data and trainer are only built (the subcommand is dropped).
    ``usage`` and ``description`` head the subcommand's ``--help``.
    """
    command = args[0] if args else None
    args = list(args) if run else list(args)[1:]
    _quiet_lightning()
    cli = TResNetCLI(TResNetClassifier, ImageDataModule, args=args, run=run,
                     trainer_defaults={"callbacks": [ThroughputProgressBar(), FitReport(), CompactModelSummary()]},
                     save_config_kwargs={"overwrite": True},
                     parser_kwargs=_parser_kwargs(command, usage, description),
                     auto_configure_optimizers=False)
    if run:
        _report(cli, run_name)
    return cli


def _report(cli: TResNetCLI, run_name: str) -> None:
    trainer = cli.trainer
    log_dir = trainer.log_dir  # a collective with several processes: every rank asks
    if not trainer.is_global_zero:  # one report per run, not one per process
        return
    if log_dir:
        log.info("Run folder: %s", log_dir)
    # The best checkpoint is in FitReport's end-of-fit summary.
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and wandb_is_offline(logger):
            log.info("W&B run saved offline. Upload it with: wandb sync %s", logger.experiment.dir.rsplit("/files", 1)[0])
