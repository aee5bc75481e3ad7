"""The training step's host syncs: at most one per optimizer step in a real Lightning fit.

On a GPU each device-to-host read (``.item()``, ``bool(t)``, ``.tolist()``, a data-dependent
shape) stops the CPU from queueing kernels ahead. They cost nothing on a CPU, so they are counted
here with :class:`~tresnet_ft.models.host_syncs.HostSyncCounter`: a 12-step fit minus a 4-step
fit gives the cost of 8 steps, with set-up and tear-down cancelled out.
"""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from tresnet_ft import TResNetClassifier
from tresnet_ft.callbacks import ThroughputProgressBar
from tresnet_ft.data import ImageDataModule
from tresnet_ft.models.host_syncs import HostSyncCounter


def _fit_syncs(tmp_path, steps: int) -> HostSyncCounter:
    torch.manual_seed(0)
    data = ImageDataModule(dataset="quickstart", dataset_options={"num_images": {"train": 64, "val": 4}},
                           image_size=32, batch_size=2, num_workers=0, randaugment_ops=0, cutout=0.0)
    data.prepare_data()
    data.setup("fit")
    # In-place ABN from a fresh init (zero last norms: the fallback path is live), EMA, plots off.
    model = TResNetClassifier.from_datamodule(data, pretrained=None, ema_decay=0.9, plots=False)
    trainer = pl.Trainer(max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0, log_every_n_steps=50,
                         logger=CSVLogger(tmp_path / str(steps)), callbacks=[ThroughputProgressBar()],
                         enable_checkpointing=False, enable_model_summary=False, accelerator="cpu", devices=1)
    with HostSyncCounter() as syncs:
        trainer.fit(model, data)
    return syncs


@pytest.mark.slow
def test_a_training_step_makes_at_most_one_host_sync(tmp_path):
    short, long = _fit_syncs(tmp_path, 4), _fit_syncs(tmp_path, 12)
    per_step = (long.total - short.total) / 8
    extra = long.counts - short.counts
    assert per_step <= 1.0, f"{per_step} host syncs per step: {dict(extra)}"
