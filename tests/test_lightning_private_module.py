"""The LightningModule-side private names the package relies on (the rest: test_lightning_private.py)."""
from __future__ import annotations

import inspect
import re
import warnings

import lightning.pytorch as pl
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.trainer.connectors.logger_connector import result

from tresnet_ft.training import module as classifier_module
from tresnet_ft.training.lightning_private import attached_trainer

from test_lightning_private import require


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
