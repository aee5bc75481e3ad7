"""Host syncs per training step of a real Lightning fit, counted on the CPU, by kind.

    python benchmarks/bench_host_syncs.py [--log-every 50]

TResNet-M with in-place ABN from a fresh init (the keep-input fallback is live), EMA, the CSV
logger and the throughput progress bar: what `tresnet-ft fit` runs. A 12-step fit minus a 4-step
fit gives 8 steps with set-up and tear-down cancelled out. On a GPU each of these reads stalls the
CPU's kernel queue; on the CPU they are free, so only a count shows them
(:class:`benchmarks.host_syncs.HostSyncCounter`). ``--log-every`` below 12 puts a logging
step (Lightning reads each logged value once) inside the window.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger

if __package__ in (None, ""):  # run as `python benchmarks/NAME.py`: make `benchmarks.` importable
    import sys as _sys
    from pathlib import Path as _Path

    _sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))

from tresnet_ft import TResNetClassifier
from tresnet_ft.training.progress import ThroughputProgressBar
from tresnet_ft.data import ImageDataModule
from benchmarks.host_syncs import HostSyncCounter


def fit_syncs(folder: Path, steps: int, log_every_n_steps: int = 50) -> HostSyncCounter:
    """The host syncs of a ``steps``-step fit on generated 32 px images, batch 2."""
    torch.manual_seed(0)
    data = ImageDataModule(dataset="quickstart", dataset_options={"num_images": {"train": 64, "val": 4}},
                           image_size=32, batch_size=2, num_workers=0, randaugment_ops=0, cutout=0.0)
    data.prepare_data()
    data.setup("fit")
    model = TResNetClassifier.from_datamodule(data, pretrained=None, ema_decay=0.9, plots=False)
    trainer = pl.Trainer(max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0,
                         log_every_n_steps=log_every_n_steps, logger=CSVLogger(folder / str(steps)),
                         callbacks=[ThroughputProgressBar()], enable_checkpointing=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    with HostSyncCounter() as syncs:
        trainer.fit(model, data)
    return syncs


def syncs_per_step(folder: Path, log_every_n_steps: int = 50) -> tuple[float, dict[str, int]]:
    """Mean syncs per step over steps 5-12, and their kinds over those 8 steps."""
    short, long = fit_syncs(folder, 4, log_every_n_steps), fit_syncs(folder, 12, log_every_n_steps)
    return (long.total - short.total) / 8, dict(long.counts - short.counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-every", type=int, default=50, help="Trainer log_every_n_steps")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        per_step, kinds = syncs_per_step(Path(folder), args.log_every)
    print(f"host syncs per training step (steps 5-12, log_every_n_steps={args.log_every}): {per_step:.2f}")
    for kind, count in sorted(kinds.items(), key=lambda item: -item[1]):
        print(f"  {kind:24s} {count / 8:6.2f} per step")


if __name__ == "__main__":
    main()
