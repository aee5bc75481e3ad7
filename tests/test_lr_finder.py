"""Lightning's learning-rate finder on TResNetClassifier: it finds ``lr`` and training uses it."""

import math

import lightning.pytorch as pl
import pytest
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.tuner import Tuner

from tresnet_ft import ImageDataModule, TResNetClassifier
from tresnet_ft.data import write_quickstart_folder


class FirstGroups(Callback):
    """The optimizer's parameter groups (name -> lr) at the first training step."""

    def __init__(self):
        self.groups = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.groups is None:
            self.groups = {g["name"]: g["initial_lr"] for g in trainer.optimizers[0].param_groups}


@pytest.mark.slow
def test_lr_find_sets_the_learning_rate_that_training_then_uses(tmp_path):
    pl.seed_everything(0)
    # 14 training batches of 2: the sweep (13 steps, the fewest that give a suggestion) fits in
    # one epoch, so no validation pass runs inside it
    root = write_quickstart_folder(tmp_path / "shapes", {"train": 28, "val": 4}, image_size=32)
    data = ImageDataModule(
        dataset="folder",
        root=str(root),
        image_size=32,
        batch_size=2,
        num_workers=0,
        randaugment_ops=0,
        cutout=0.0,
    )
    model = TResNetClassifier.from_datamodule(
        data,
        pretrained=None,
        lr=1e-3,
        backbone_lr_mult=0.1,
        freeze_epochs=1,
        ema_decay=0.9,
        plots=False,
    )
    groups = FirstGroups()
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[groups],
        num_sanity_val_steps=0,
    )

    finder = Tuner(trainer).lr_find(
        model, datamodule=data, min_lr=1e-5, max_lr=1.0, num_training=13, early_stop_threshold=None
    )

    assert len(finder.results["lr"]) == 13
    suggestion = finder.suggestion()
    assert suggestion is not None and 1e-5 <= suggestion <= 1.0
    assert (
        model.hparams.lr == suggestion
    )  # found under `hparams.lr`, which configure_optimizers reads
    assert not list(tmp_path.glob(".lr_find_*.ckpt"))  # the sweep's restore point is cleaned up

    trainer.limit_train_batches = 1
    trainer.fit(model, datamodule=data)
    assert math.isclose(groups.groups["head"], suggestion)
    assert math.isclose(
        groups.groups["backbone"], 0.1 * suggestion
    )  # the head/backbone ratio stays
    assert trainer.global_step == 1
