"""The LightningModule-side private names the package relies on, and the check that only the adapter
(tresnet_ft/training/lightning_private.py) touches any of them (the rest: test_lightning_private.py)."""
from __future__ import annotations

import ast
import inspect
import re
import warnings
from pathlib import Path

import pytest

import lightning.pytorch as pl
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.trainer.connectors.logger_connector import result

from tresnet_ft.training import module as classifier_module
from tresnet_ft.training.lightning_private import attached_trainer

from test_lightning_private import ADAPTER, PACKAGE, PRIVATE_SOURCES, RELIED_UPON, require


def test_attached_trainer_is_none_alone_and_the_trainer_once_attached(tmp_path):
    model = BoringModel()
    assert attached_trainer(model) is None
    trainer = pl.Trainer(default_root_dir=tmp_path, max_steps=1, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model)
    require(attached_trainer(model) is trainer and model.trainer is trainer,
            "LightningModule keeps its Trainer in _trainer, which .trainer returns")


def test_lightnings_epoch_sync_advice_is_the_warning_the_module_silences():
    """The module logs values every rank already holds without sync_dist (no all_reduce per key) and
    silences Lightning's advice for exactly those keys; the filter must still match its wording."""
    source = inspect.getsource(result)
    require("It is recommended to use `self.log({result_metric.meta.name!r}, ..., sync_dist=True)`" in source,
            "Lightning's advice to log epoch-level values with sync_dist=True has this wording")
    classifier_module.silence_epoch_sync_advice()  # what TResNetClassifier.setup does
    filters = [f for f in warnings.filters if f[1] is not None and "recommended to use" in f[1].pattern]
    ours = "It is recommended to use `self.log('val/mAP', ..., sync_dist=True)` when logging on epoch level"
    assert any(f[1].match(ours.replace("val/mAP", key)) for f in filters for key in ("val/f1_tuned", "test/top1"))
    theirs = "It is recommended to use `self.log('val/my_metric', ..., sync_dist=True)` when logging on epoch level"
    assert any(f[1].match(ours) for f in filters) and not any(f[1].match(theirs) for f in filters)
    assert classifier_module.SAME_ON_EVERY_RANK == {"sync_dist": False}
    assert re.search(r"silence_epoch_sync_advice\(\)", inspect.getsource(classifier_module.TResNetClassifier.setup))


# -- nothing else in the package touches them -------------------------------------------------------


def private_uses(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    """``file:line name`` (file relative to ``root``) for each relied-upon private name, or private
    import from Lightning, its parsers or argparse, in one source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names = [node.name]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PRIVATE_SOURCES:
            names = [alias.name for alias in node.names if alias.name.startswith("_")]
        else:
            continue
        found += [f"{path.relative_to(root)}:{node.lineno} {name}" for name in names
                  if name in RELIED_UPON or isinstance(node, ast.ImportFrom)]
    return found


def test_only_the_adapter_touches_these_private_names():
    offences = [use for path in sorted(PACKAGE.rglob("*.py")) if path != ADAPTER
                for use in private_uses(path)]
    assert not offences, ("Private Lightning/argparse names outside "
                          "tresnet_ft/training/lightning_private.py:\n  " + "\n  ".join(offences))


@pytest.mark.parametrize("source, expected", [
    ("from lightning.fabric.utilities.types import _PATH\n"
     "class CLI:\n"
     "    def _parse_ckpt_path(self):\n"
     "        return logger._offline\n",
     ["sample.py:1 _PATH", "sample.py:3 _parse_ckpt_path", "sample.py:4 _offline"]),
    # what ema.py and loggers.py did before the adapter had names for it
    ("class Writer:\n"
     "    def _check_log_dir_exists(self):\n"
     "        self._kwargs['multi_avg_fn'] = self._average_model\n"
     "        return self._fs, self._experiment, self._latest_update_step\n",
     ["sample.py:2 _check_log_dir_exists", "sample.py:3 _average_model", "sample.py:3 _kwargs",
      "sample.py:4 _experiment", "sample.py:4 _fs", "sample.py:4 _latest_update_step"]),
])
def test_the_private_use_check_finds_each_kind_of_use(tmp_path, source, expected):
    sample = tmp_path / "sample.py"
    sample.write_text(source)
    assert sorted(private_uses(sample, root=tmp_path)) == expected


def test_ema_and_the_csv_logger_reach_lightning_only_through_the_adapter():
    ema, loggers = PACKAGE / "training" / "ema.py", PACKAGE / "training" / "loggers.py"
    assert private_uses(ema) == [] and private_uses(loggers) == []
