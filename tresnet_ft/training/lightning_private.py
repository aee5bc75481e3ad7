"""The one place that touches private APIs of Lightning and of the parsers under its CLI.

Each function or hook here names the private attribute or method it relies on. Every such name
has a test in tests/test_lightning_private.py that fails loudly, naming the installed versions,
when a release changes it; pyproject.toml bounds Lightning below the first minor release those
tests have not run on.
"""
from __future__ import annotations

import argparse
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EMAWeightAveraging, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.strategies import DDPStrategy
from torch.optim.swa_utils import AveragedModel


def search_unused_parameters(trainer: "pl.Trainer") -> bool:
    """Make a DDP strategy that has not wrapped the model yet use ``find_unused_parameters=True``.

    Returns whether the strategy is DDP (and so was changed). Lightning offers the flag only when
    the strategy is built; a callback that freezes part of the model learns too late that it
    needs it. The DDP strategy keeps its constructor's keyword arguments in ``_ddp_kwargs`` and
    passes them to ``DistributedDataParallel`` in ``strategy.setup``.
    """
    strategy = trainer.strategy
    if not isinstance(strategy, DDPStrategy):
        return False
    strategy._ddp_kwargs["find_unused_parameters"] = True
    return True


def attached_trainer(module: "pl.LightningModule") -> "pl.Trainer | None":
    """The Trainer ``module`` is attached to, or None (a module used on its own, e.g. loaded for a
    notebook). ``module.trainer`` raises when there is none; ``LightningModule`` keeps the
    reference in ``_trainer``."""
    return module._trainer


class LightningCLIWithHooks(LightningCLI):
    """:class:`~lightning.pytorch.cli.LightningCLI` with public names for the private steps we change.

    Subclasses override the public hooks and call ``super()``; the private methods only forward
    to them, so no other file overrides or calls a private name of LightningCLI.

    - :meth:`load_checkpoint_hyperparameters` runs ``LightningCLI._parse_ckpt_path()``, which
      ``LightningCLI.__init__`` calls once, right after parsing: it reads the hyperparameters
      saved in ``--ckpt_path`` (``torch.load``) into ``self.config``, over the parsed values and
      all of them. A subclass may replace the step without calling ``super()``
      (``tresnet_ft.cli.lightning_cli.TResNetCLI`` restores only settings a checkpoint may set).
    - :meth:`build_trainer` runs ``LightningCLI._instantiate_trainer(config, callbacks)``, which
      the public ``instantiate_trainer`` calls with the Trainer's keyword arguments and the
      callbacks given as arguments; it adds ``trainer_defaults["callbacks"]`` and the
      config-saving callback, then builds the Trainer.
    - :meth:`subcommand_parser` reads ``_subcommand_parsers``, the ``{name: parser}`` dict that
      ``LightningCLI._add_subcommands`` fills while the parser is set up.
    """

    def _parse_ckpt_path(self) -> None:
        self.load_checkpoint_hyperparameters()

    def load_checkpoint_hyperparameters(self) -> None:
        """Lightning's step that reads ``--ckpt_path``'s hyperparameters into ``self.config``."""
        super()._parse_ckpt_path()

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> pl.Trainer:
        return self.build_trainer(config, callbacks)

    def build_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> pl.Trainer:
        """Lightning's step that builds the Trainer from ``config`` (its keyword arguments, changed
        in place) plus ``callbacks`` and ``self.trainer_defaults["callbacks"]``."""
        return super()._instantiate_trainer(config, callbacks)

    def subcommand_parser(self, name: str | None) -> Any | None:
        """The parser of subcommand ``name`` (``fit``, ``validate``, ...), or None where there is none
        (an unknown name, or a CLI built with ``run=False``, which has no subcommands)."""
        return getattr(self, "_subcommand_parsers", {}).get(name)


def parser_option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string a parser accepts (``-h``, ``--trainer.max_epochs``, ...).

    argparse has no public list of them; it registers each in the private dict
    ``ArgumentParser._option_string_actions`` (option string → action), which jsonargparse's
    parsers inherit.
    """
    return list(parser._option_string_actions)


def wandb_is_offline(logger: WandbLogger) -> bool:
    """Whether a :class:`~lightning.pytorch.loggers.WandbLogger` was built with ``offline=True``.

    The logger keeps that argument only in its private ``_offline`` attribute.
    """
    return bool(logger._offline)


def rich_console_kwargs(bar: RichProgressBar) -> dict[str, Any]:
    """The ``console_kwargs`` a :class:`~lightning.pytorch.callbacks.RichProgressBar` was built with.

    The bar keeps them (``{}`` when none were given) in its private ``_console_kwargs`` attribute
    and builds its console from them only when its display starts.
    """
    return dict(bar._console_kwargs)


class EMAWeightAveragingWithHooks(EMAWeightAveraging):
    """:class:`~lightning.pytorch.callbacks.EMAWeightAveraging` with public names for the private
    state and the update step we change.

    - :attr:`averaging_kwargs` is ``WeightAveraging._kwargs``: the keyword arguments (``avg_fn``,
      ``multi_avg_fn``, ...) that ``setup("fit")`` passes to ``AveragedModel``. The dict is live:
      a change before fit changes how the next average is built.
    - :attr:`average_model` is ``_average_model``: the ``AveragedModel`` that ``setup("fit")``
      builds, None before. Lightning's validation swap and checkpoint hooks do nothing while it is
      None, so setting it to None turns them off.
    - :meth:`update_average` is what Lightning's ``on_train_batch_end`` and ``on_train_epoch_end``
      run when an update is due (``self._average_model.update_parameters(pl_module)``). Those two
      hooks are copied here from Lightning, with their ``_latest_update_step`` and
      ``_latest_update_epoch`` bookkeeping, so that a subclass can replace only the update.
    """

    @property
    def averaging_kwargs(self) -> dict[str, Any]:
        return self._kwargs

    @property
    def average_model(self) -> AveragedModel | None:
        return self._average_model

    @average_model.setter
    def average_model(self, model: AveragedModel | None) -> None:
        self._average_model = model

    def update_average(self, pl_module: "pl.LightningModule") -> None:
        """Fold ``pl_module``'s current weights into :attr:`average_model` (Lightning's update)."""
        assert self._average_model is not None
        self._average_model.update_parameters(pl_module)

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step_idx = trainer.global_step - 1  # global_step counts optimizer steps, not batches
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=step_idx):
            self.update_average(pl_module)
            self._latest_update_step = trainer.global_step

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        epoch = trainer.current_epoch
        if epoch > self._latest_update_epoch and self.should_update(epoch_idx=epoch):
            self.update_average(pl_module)
            self._latest_update_epoch = epoch


class ExperimentWriterWithHooks(ExperimentWriter):
    """The CSV logger's :class:`~lightning.pytorch.loggers.csv_logs.ExperimentWriter` with public
    names for the private step we change and for its filesystem.

    - :meth:`prepare_log_dir` runs ``_check_log_dir_exists()``, which the writer's ``__init__``
      calls once, after setting ``log_dir`` and ``metrics_file_path`` and before creating
      ``log_dir``: it warns when ``log_dir`` is not empty and deletes an existing ``metrics.csv``.
    - :attr:`filesystem` is ``_fs``, the fsspec filesystem of ``log_dir`` through which the writer
      reads and writes ``metrics.csv`` (local or remote alike).
    """

    def _check_log_dir_exists(self) -> None:
        self.prepare_log_dir()

    def prepare_log_dir(self) -> None:
        """Lightning's step that warns about a non-empty ``log_dir`` and deletes ``metrics.csv``."""
        super()._check_log_dir_exists()

    @property
    def filesystem(self) -> Any:  # an fsspec AbstractFileSystem; fsspec comes only through Lightning
        return self._fs


class CSVLoggerWithHooks(CSVLogger):
    """:class:`~lightning.pytorch.loggers.CSVLogger` whose writer is built by a public hook.

    Lightning's ``experiment`` property builds ``ExperimentWriter(log_dir=self.log_dir)`` in place,
    so a logger with another writer must copy the property. The copy below is Lightning's: it makes
    ``root_dir`` through the private filesystem ``_fs`` and caches the writer in the private
    ``_experiment``, which ``finalize`` reads to tell whether anything was logged. Subclasses
    override :meth:`make_writer` only.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = self.make_writer(self.log_dir)
        return self._experiment

    def make_writer(self, log_dir: str) -> ExperimentWriter:
        """The writer for ``log_dir``, built once, on the first use of :attr:`experiment`."""
        return ExperimentWriter(log_dir=log_dir)
