"""The training step's host syncs: at most one per optimizer step in a real Lightning fit.

On a GPU each device-to-host read (``.item()``, ``bool(t)``, ``.tolist()``, a data-dependent
shape) stops the CPU from queueing kernels ahead. They cost nothing on a CPU, so they are counted
here (benchmarks/bench_host_syncs.py): a 12-step fit minus a 4-step fit.
"""
from __future__ import annotations

import pytest

from benchmarks.bench_host_syncs import syncs_per_step


@pytest.mark.slow
def test_a_training_step_makes_at_most_one_host_sync(tmp_path):
    per_step, kinds = syncs_per_step(tmp_path)
    assert per_step <= 1.0, f"{per_step} host syncs per step: {kinds}"
    # The one sync is the batched read before the forward: norms' decisions and the last loss.
    assert kinds == {"tolist": 8}, kinds


def _validation_syncs(folder, task: str, num_batches: int):
    """The host syncs of ``trainer.validate`` over ``num_batches`` batches of 2 generated 32 px images."""
    import lightning.pytorch as pl
    import torch

    from benchmarks.host_syncs import HostSyncCounter
    from tresnet_ft import TResNetClassifier
    from tresnet_ft.data import ImageDataModule

    torch.manual_seed(0)
    data = ImageDataModule(dataset="quickstart" if task == "single_label" else "quickstart_multilabel",
                           dataset_options={"num_images": {"train": 2, "val": 2 * num_batches}}, image_size=32,
                           batch_size=2, num_workers=0, randaugment_ops=0, cutout=0.0)
    # plots=False: drawing (captions of the worst images) reads values, once per run and not per batch.
    model = TResNetClassifier.from_datamodule(data, pretrained=None, plots=False)
    trainer = pl.Trainer(default_root_dir=folder, logger=False, enable_checkpointing=False, accelerator="cpu",
                         devices=1, enable_model_summary=False, enable_progress_bar=False)
    with HostSyncCounter() as syncs:
        trainer.validate(model, data, verbose=False)
    return syncs


@pytest.mark.slow
@pytest.mark.parametrize("task", ["single_label", "multi_label"])
def test_a_validation_step_makes_no_host_sync(tmp_path, task):
    # Metrics, scores and worst images stay on the device until the epoch's end: 4 more batches
    # cost no sync at all (the end of the epoch reads its results once, whatever their number).
    short, long = _validation_syncs(tmp_path, task, 2), _validation_syncs(tmp_path, task, 6)
    assert long.total == short.total, dict(long.counts - short.counts)
