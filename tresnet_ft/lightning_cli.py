"""LightningCLI wiring: the classifier, the DataModule, and the links between them."""
from __future__ import annotations

import logging
import pickle
import warnings
from typing import Any, Sequence

from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger

from .progress import ThroughputProgressBar
from .checkpoint_io import SafeCheckpointIO
from .data import ImageDataModule
from .models.weights import read_checkpoint
from .module import TResNetClassifier

log = logging.getLogger("tresnet_ft")

# We always pass the parsed recipe as `args`; Lightning's reminder that sys.argv also holds flags
# is aimed at a different mistake and would print a page-wide line on every run.
warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
# Raised inside Lightning's own batch handling with torch >= 2.10; nothing a user can act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")

# Lightning lines that say nothing about the run: adverts for its cloud packages, and the note
# that our checkpoint callbacks replace the Trainer's default one (which is by design).
NOISE_PREFIXES = ("💡 Tip:", "The following callbacks returned in `LightningModule.configure_callbacks`")


def _drop_noise(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(NOISE_PREFIXES)


def _quiet_lightning() -> None:
    for handler in logging.getLogger("lightning.pytorch").handlers:
        if _drop_noise not in handler.filters:
            handler.addFilter(_drop_noise)


class TResNetCLI(LightningCLI):
    """Lightning's CLI with the data → model links, so nothing is typed twice."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {name: spec for name, spec in LightningCLI.subcommands().items()
                if name in ("fit", "validate", "test")}

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads --ckpt_path's hyperparameters here (torch.load, weights_only=True); a
        # file it cannot read gets our one-line explanation instead of torch's page-long one.
        try:
            super()._parse_ckpt_path()
        except (pickle.UnpicklingError, RuntimeError, EOFError):
            read_checkpoint(self.config[self.config.subcommand].get("ckpt_path"))  # raises the clear error
            raise

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        # Atomic checkpoint writes and safe reads, unless the user chose plugins. Added here, not
        # as a trainer default, so the saved config.yaml stays plain YAML.
        if config.get("plugins") is None:
            config["plugins"] = [SafeCheckpointIO()]
        # The throughput bar is a default; --trainer.enable_progress_bar false must not clash with it.
        if config.get("enable_progress_bar") is False:
            defaults = [cb for cb in self.trainer_defaults.get("callbacks", []) if not isinstance(cb, ProgressBar)]
            self.trainer_defaults = {**self.trainer_defaults, "callbacks": defaults}
        return super()._instantiate_trainer(config, callbacks)

    def add_arguments_to_parser(self, parser: Any) -> None:
        # Known only once the data is described (folder/CSV: by reading the files).
        for key in ("num_classes", "classes", "task"):
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")
        # How evaluation images are prepared travels with the checkpoint.
        for key in ("image_size", "eval_crop", "mean", "std"):
            parser.link_arguments(f"data.{key}", f"model.{key}")


def run_cli(args: Sequence[str], run_name: str, run: bool = True) -> TResNetCLI:
    """Run ``fit|validate|test`` with LightningCLI arguments ``args``; report where things went.

    With ``run=False`` the model, data and trainer are only built (the subcommand is dropped).
    """
    args = list(args) if run else list(args)[1:]
    _quiet_lightning()
    cli = TResNetCLI(TResNetClassifier, ImageDataModule, args=args, run=run,
                     trainer_defaults={"callbacks": [ThroughputProgressBar()]},
                     save_config_kwargs={"overwrite": True},
                     # A bad flag raises (one line from tresnet_ft.cli.main), not a page of usage.
                     parser_kwargs={"default_env": False, "exit_on_error": False},
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
    best = getattr(trainer.checkpoint_callback, "best_model_path", "")
    if best:
        log.info("Best checkpoint: %s", best)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._offline:
            log.info("W&B run saved offline. Upload it with: wandb sync %s", logger.experiment.dir.rsplit("/files", 1)[0])
