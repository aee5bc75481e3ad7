"""Private APIs we rely on (tresnet_ft/training/lightning_private.py): each test fails loudly, naming
the installed versions, when a release changes one, instead of a feature silently stopping to work.
"""
import argparse
import inspect
import platform
import warnings
from pathlib import Path

import jsonargparse
import lightning
import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, RichProgressBar, WeightAveraging
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.strategies import DDPStrategy
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import tresnet_ft
from tresnet_ft.training import lightning_private
from tresnet_ft.training.lightning_private import (
    CSVLoggerWithHooks,
    EMAWeightAveragingWithHooks,
    ExperimentWriterWithHooks,
    LightningCLIWithHooks,
    parser_option_strings,
    rich_console_kwargs,
    search_unused_parameters,
    wandb_is_offline,
)

VERSIONS = (f"lightning {lightning.__version__}, jsonargparse {jsonargparse.__version__}, "
            f"Python {platform.python_version()}")
PACKAGE = Path(tresnet_ft.__file__).parent
ADAPTER = Path(lightning_private.__file__)
# Every private name the adapter relies on; no other module of the package may use one.
RELIED_UPON = {"_ddp_kwargs", "_setup_model", "_parse_ckpt_path", "_instantiate_trainer",
               "_subcommand_parsers", "_add_subcommands", "_option_string_actions", "_offline",
               "_console_kwargs", "_PATH", "_kwargs", "_average_model", "_latest_update_step",
               "_latest_update_epoch", "_check_log_dir_exists", "_fs", "_experiment", "_trainer"}
PRIVATE_SOURCES = ("lightning", "lightning_fabric", "pytorch_lightning", "jsonargparse", "argparse")
# The CLIs below get their arguments as ``args`` while pytest's own are in sys.argv, on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter is intended")


def require(condition: bool, what: str) -> None:
    """Fail with what changed, the installed versions and where to adapt, not a bare assert."""
    if not condition:
        pytest.fail(f"{what}: no longer true with {VERSIONS}. Adapt "
                    "tresnet_ft/training/lightning_private.py, then the bound on lightning in "
                    "pyproject.toml.", pytrace=False)


def parameter_names(function) -> list[str]:
    return list(inspect.signature(function).parameters)


class _Parsed(Exception):
    """Stops a LightningCLI after parsing, before it builds the model and the Trainer."""


class StopsAfterParsing(LightningCLIWithHooks):
    def before_instantiate_classes(self) -> None:
        raise _Parsed(self)


# -- DDPStrategy._ddp_kwargs -----------------------------------------------------------------------


def test_ddp_strategy_passes_its_kwargs_to_distributed_data_parallel():
    source = inspect.getsource(DDPStrategy._setup_model)
    require("DistributedDataParallel(" in source and "**self._ddp_kwargs" in source,
            "DDPStrategy._setup_model passes self._ddp_kwargs to DistributedDataParallel")


def test_search_unused_parameters_turns_the_flag_on_for_ddp_only():
    trainer = pl.Trainer(strategy="ddp", accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    require(isinstance(getattr(trainer.strategy, "_ddp_kwargs", None), dict),
            "DDPStrategy keeps its keyword arguments in the dict _ddp_kwargs")
    assert trainer.strategy._ddp_kwargs.get("find_unused_parameters") in (None, False)
    assert search_unused_parameters(trainer)
    assert trainer.strategy._ddp_kwargs["find_unused_parameters"] is True
    single = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    assert not search_unused_parameters(single)


# -- LightningCLI._parse_ckpt_path, _instantiate_trainer, _subcommand_parsers ---------------------


def test_lightning_cli_private_steps_keep_their_signatures_and_callers():
    require(parameter_names(LightningCLI._parse_ckpt_path) == ["self"],
            "LightningCLI._parse_ckpt_path(self) exists")
    require("self._parse_ckpt_path()" in inspect.getsource(LightningCLI.__init__),
            "LightningCLI.__init__ calls self._parse_ckpt_path()")
    require(parameter_names(LightningCLI._instantiate_trainer) == ["self", "config", "callbacks"],
            "LightningCLI._instantiate_trainer(self, config, callbacks) exists")
    require("self._instantiate_trainer(" in inspect.getsource(LightningCLI.instantiate_trainer),
            "LightningCLI.instantiate_trainer calls self._instantiate_trainer(config, callbacks)")
    require("self._subcommand_parsers[subcommand] = " in inspect.getsource(LightningCLI._add_subcommands),
            "LightningCLI._add_subcommands fills the dict self._subcommand_parsers")


def test_the_public_hooks_run_where_lightning_runs_its_private_steps(tmp_path):
    calls = []

    class Recording(LightningCLIWithHooks):
        def load_checkpoint_hyperparameters(self) -> None:
            calls.append("load_checkpoint_hyperparameters")
            super().load_checkpoint_hyperparameters()

        def build_trainer(self, config, callbacks):
            calls.append(("build_trainer", sorted(config)))
            return super().build_trainer(config, callbacks)

    cli = Recording(BoringModel, run=False, save_config_callback=None,
                    args=["--trainer.logger=false", "--trainer.enable_checkpointing=false",
                          f"--trainer.default_root_dir={tmp_path}"])
    require([call if isinstance(call, str) else call[0] for call in calls]
            == ["load_checkpoint_hyperparameters", "build_trainer"],
            "LightningCLI runs _parse_ckpt_path, then _instantiate_trainer, once each")
    assert "max_epochs" in calls[1][1]  # the Trainer's keyword arguments reach the hook
    assert isinstance(cli.trainer, pl.Trainer) and cli.trainer.default_root_dir == str(tmp_path)


def test_subcommand_parser_finds_each_subcommands_parser():
    with pytest.raises(_Parsed) as parsed:
        StopsAfterParsing(BoringModel, args=["fit", "--trainer.max_epochs=3"])
    cli = parsed.value.args[0]
    fit = cli.subcommand_parser("fit")
    require(isinstance(fit, LightningArgumentParser),
            "LightningCLI keeps each subcommand's parser in self._subcommand_parsers")
    assert fit is not cli.parser and cli.subcommand_parser("validate") is not fit
    assert "--trainer.max_epochs" in parser_option_strings(fit)
    assert cli.subcommand_parser("no-such-command") is None
    assert cli.subcommand_parser(None) is None


def test_subcommand_parser_is_none_without_subcommands(tmp_path):
    cli = LightningCLIWithHooks(BoringModel, run=False, save_config_callback=None,
                                args=["--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"])
    assert cli.subcommand_parser("fit") is None


# -- argparse's ArgumentParser._option_string_actions ---------------------------------------------


@pytest.mark.parametrize("parser_class", [argparse.ArgumentParser, LightningArgumentParser])
def test_parser_option_strings_lists_every_registered_option(parser_class):
    parser = parser_class()
    action = parser.add_argument("-n", "--max_epochs", type=int)
    require(isinstance(getattr(parser, "_option_string_actions", None), dict),
            f"{parser_class.__module__}.{parser_class.__name__} registers options in the dict "
            "_option_string_actions")
    require(parser._option_string_actions.get("--max_epochs") is action,
            "_option_string_actions maps each option string to its action")
    assert {"-h", "--help", "-n", "--max_epochs"} <= set(parser_option_strings(parser))


# -- WandbLogger._offline ---------------------------------------------------------------------------


def test_wandb_is_offline_reads_the_loggers_offline_flag(tmp_path):
    require("offline" in parameter_names(WandbLogger.__init__), "WandbLogger(offline=...) exists")
    offline, online = WandbLogger(offline=True, save_dir=tmp_path), WandbLogger(save_dir=tmp_path)
    require(getattr(offline, "_offline", None) is True and getattr(online, "_offline", None) is False,
            "WandbLogger keeps its offline argument in self._offline")
    assert wandb_is_offline(offline) and not wandb_is_offline(online)


# -- RichProgressBar._console_kwargs ----------------------------------------------------------------


def test_rich_console_kwargs_reads_what_the_bar_was_built_with():
    given = {"force_terminal": False, "width": 80}
    require(getattr(RichProgressBar(console_kwargs=given), "_console_kwargs", None) == given,
            "RichProgressBar keeps its console_kwargs in self._console_kwargs")
    bar = RichProgressBar(console_kwargs=given)
    assert rich_console_kwargs(bar) == given
    assert rich_console_kwargs(RichProgressBar()) == {}


# -- WeightAveraging._kwargs, _average_model, _latest_update_step/_epoch ---------------------------


def test_weight_averaging_passes_its_kwargs_to_the_averaged_model_it_keeps():
    callback = EMAWeightAveraging(decay=0.9)
    require(isinstance(getattr(callback, "_kwargs", None), dict) and "avg_fn" in callback._kwargs,
            "WeightAveraging keeps AveragedModel's keyword arguments (avg_fn for EMA) in the dict _kwargs")
    require(getattr(callback, "_average_model", "missing") is None,
            "WeightAveraging keeps its AveragedModel in self._average_model, None before fit")
    setup = inspect.getsource(WeightAveraging.setup)
    require("self._average_model = AveragedModel(" in setup and "**self._kwargs" in setup,
            "WeightAveraging.setup builds self._average_model = AveragedModel(..., **self._kwargs)")
    for hook in (WeightAveraging.on_validation_epoch_start, WeightAveraging.on_validation_epoch_end):
        require("if self._average_model is not None:" in inspect.getsource(hook),
                f"WeightAveraging.{hook.__name__} does nothing while self._average_model is None")
    for hook in (WeightAveraging.on_save_checkpoint, WeightAveraging.on_load_checkpoint):
        require("if self._average_model is None:" in inspect.getsource(hook),
                f"WeightAveraging.{hook.__name__} skips the average while self._average_model is None")


def test_averaging_kwargs_and_average_model_are_the_callbacks_own(tmp_path):
    callback = EMAWeightAveragingWithHooks(decay=0.9)
    assert callback.averaging_kwargs is callback._kwargs and callback.average_model is None
    multi_avg_fn = get_ema_multi_avg_fn(0.9)
    callback.averaging_kwargs.pop("avg_fn")
    callback.averaging_kwargs["multi_avg_fn"] = multi_avg_fn
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    module = BoringModel()
    callback.setup(trainer, module, "fit")
    average = callback.average_model
    assert isinstance(average, AveragedModel) and average is callback._average_model
    assert average.multi_avg_fn is multi_avg_fn and average.avg_fn is None  # the kwargs reached it
    callback.average_model = None
    assert callback._average_model is None
    before = {name: value.clone() for name, value in module.state_dict().items()}
    callback.on_validation_epoch_start(trainer, module)  # no average: no swap
    assert all(torch.equal(before[name], value) for name, value in module.state_dict().items())


def test_lightnings_update_hooks_are_the_ones_the_adapter_copies():
    batch_end = inspect.getsource(WeightAveraging.on_train_batch_end)
    require(all(line in batch_end for line in (
        "step_idx = trainer.global_step - 1",
        "(trainer.global_step > self._latest_update_step) and self.should_update(step_idx=step_idx)",
        "self._average_model.update_parameters(pl_module)",
        "self._latest_update_step = trainer.global_step")),
        "WeightAveraging.on_train_batch_end updates when global_step passes _latest_update_step and "
        "should_update(step_idx) holds, then records _latest_update_step")
    epoch_end = inspect.getsource(WeightAveraging.on_train_epoch_end)
    require(all(line in epoch_end for line in (
        "(trainer.current_epoch > self._latest_update_epoch) and self.should_update(epoch_idx=trainer.current_epoch)",
        "self._average_model.update_parameters(pl_module)",
        "self._latest_update_epoch = trainer.current_epoch")),
        "WeightAveraging.on_train_epoch_end updates when current_epoch passes _latest_update_epoch and "
        "should_update(epoch_idx) holds, then records _latest_update_epoch")


def _averaged_fit(tmp_path, callback) -> pl.Trainer:
    pl.seed_everything(7)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=5, limit_val_batches=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback], default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    return trainer


@pytest.mark.parametrize("schedule", [{"update_every_n_steps": 2},
                                      {"update_every_n_steps": 0, "update_starting_at_epoch": 0}],
                         ids=["steps", "epochs"])
def test_the_hooked_callback_averages_as_lightnings_does(tmp_path, schedule):
    updates = []

    class Recording(EMAWeightAveragingWithHooks):
        def update_average(self, pl_module):
            updates.append(pl_module.trainer.global_step)
            super().update_average(pl_module)

    lightnings, hooked = EMAWeightAveraging(decay=0.5, **schedule), Recording(decay=0.5, **schedule)
    _averaged_fit(tmp_path / "lightning", lightnings)
    _averaged_fit(tmp_path / "hooked", hooked)
    require(int(lightnings._average_model.n_averaged) == len(updates) > 0,
            "Lightning's update hooks update as often as the adapter's copies of them")
    assert (hooked._latest_update_step, hooked._latest_update_epoch) == (
        lightnings._latest_update_step, lightnings._latest_update_epoch)
    expected, got = lightnings._average_model.state_dict(), hooked.average_model.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected)


# -- ExperimentWriter._check_log_dir_exists, _fs; CSVLogger._fs, _experiment -----------------------


def test_the_csv_writer_checks_its_log_dir_in_a_method_its_init_calls():
    callers = [cls for cls in ExperimentWriter.__mro__ if cls.__module__.startswith("lightning")
               and "__init__" in vars(cls) and "self._check_log_dir_exists()" in inspect.getsource(cls.__init__)]
    require(bool(callers), "ExperimentWriter.__init__ calls self._check_log_dir_exists()")
    require(parameter_names(ExperimentWriter._check_log_dir_exists) == ["self"],
            "ExperimentWriter._check_log_dir_exists(self) exists")


def _with_old_metrics(log_dir: Path) -> Path:
    log_dir.mkdir(parents=True)
    (log_dir / "metrics.csv").write_text("epoch,step,loss\n0,0,1.0\n")
    return log_dir / "metrics.csv"


def test_prepare_log_dir_runs_where_lightning_deletes_the_old_metrics(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning warns that the folder is not empty
        ExperimentWriter(log_dir=str(tmp_path / "lightning"))  # nothing there yet: nothing to delete
        lightnings = _with_old_metrics(tmp_path / "lightning_with_metrics")
        ExperimentWriter(log_dir=str(lightnings.parent))
        require(not lightnings.exists(), "ExperimentWriter() deletes an existing metrics.csv")
        hooked = _with_old_metrics(tmp_path / "hooked")
        ExperimentWriterWithHooks(log_dir=str(hooked.parent))
        assert not hooked.exists()  # the default hook is Lightning's step
    calls = []

    class Keeping(ExperimentWriterWithHooks):
        def prepare_log_dir(self):
            calls.append(self.metrics_file_path)

    kept = _with_old_metrics(tmp_path / "kept")
    Keeping(log_dir=str(kept.parent))
    assert calls == [str(kept)] and kept.read_text().startswith("epoch,step,loss")


def test_the_writers_filesystem_reads_and_writes_its_metrics(tmp_path):
    writer = ExperimentWriterWithHooks(log_dir=str(tmp_path / "run"))
    require(getattr(writer, "_fs", None) is not None and writer.filesystem is writer._fs,
            "ExperimentWriter keeps the fsspec filesystem of its log_dir in self._fs")
    writer.log_metrics({"loss": 0.5}, step=3)
    writer.save()
    assert writer.filesystem.isfile(writer.metrics_file_path)
    with writer.filesystem.open(writer.metrics_file_path, "r") as handle:
        assert handle.read().splitlines()[1].split(",")[-1] == "3"


def test_lightnings_csv_logger_builds_and_caches_its_writer_as_the_adapter_copies():
    experiment = inspect.getsource(CSVLogger.experiment.fget)
    require("self._fs.makedirs(self.root_dir, exist_ok=True)" in experiment
            and "self._experiment = ExperimentWriter(log_dir=self.log_dir)" in experiment,
            "CSVLogger.experiment makes root_dir through self._fs and caches its ExperimentWriter in "
            "self._experiment")
    require("if self._experiment is None:" in inspect.getsource(CSVLogger.finalize),
            "CSVLogger.finalize does nothing while self._experiment is None")


def test_make_writer_builds_the_writer_that_the_logger_caches(tmp_path):
    lightnings = CSVLogger(tmp_path / "lightning", name="run", version=0)
    require(getattr(lightnings, "_experiment", "missing") is None and hasattr(lightnings, "_fs"),
            "CSVLogger keeps its writer in self._experiment (None until used) and has a filesystem _fs")
    built = []

    class Recording(CSVLoggerWithHooks):
        def make_writer(self, log_dir):
            built.append(log_dir)
            return super().make_writer(log_dir)

    hooked = Recording(tmp_path / "hooked", name="run", version=0)
    hooked.finalize("success")  # nothing logged: no writer, no folder
    assert built == [] and not (tmp_path / "hooked").exists()
    for logger in (lightnings, hooked):
        assert logger.experiment is logger.experiment is logger._experiment
        logger.log_metrics({"loss": 0.25}, step=1)
        logger.save()
    assert built == [hooked.log_dir] and type(hooked.experiment) is ExperimentWriter
    read = [Path(logger.log_dir, "metrics.csv").read_text() for logger in (lightnings, hooked)]
    assert read[0] == read[1] and "0.25" in read[0]
