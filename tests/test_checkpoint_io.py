"""Training checkpoints: written atomically (a crash while writing keeps the previous file), read
without unpickling anything but tensors and plain values."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.run_helpers import REPO, error_line
from tresnet_ft import UnsafeCheckpointError
from tresnet_ft.training.checkpoint_io import SafeCheckpointIO, partial_path, save_atomically


def _state(value: float, size: int = 1000) -> dict:
    return {
        "pytorch-lightning_version": "2.6.6",
        "global_step": int(value),
        "state_dict": {"w": torch.full((size,), value)},
    }


def test_save_then_load_round_trips_and_leaves_no_partial_file(tmp_path):
    io = SafeCheckpointIO()
    io.save_checkpoint(_state(1.0), tmp_path / "run" / "last.ckpt")
    loaded = io.load_checkpoint(tmp_path / "run" / "last.ckpt")
    assert loaded["global_step"] == 1 and torch.equal(
        loaded["state_dict"]["w"], torch.ones(1000)
    )
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["last.ckpt"]


def test_an_error_half_way_through_writing_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch
):
    from tresnet_ft.training import checkpoint_io

    path = tmp_path / "last.ckpt"
    save_atomically(_state(1.0), path)
    before = path.read_bytes()

    def dies_half_way(obj, handle):
        handle.write(b"PK\x03\x04 half a zip archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        SafeCheckpointIO().save_checkpoint(_state(2.0), path)
    assert path.read_bytes() == before and not partial_path(path).exists()
    assert SafeCheckpointIO().load_checkpoint(path)["global_step"] == 1


# A process that saves checkpoint 1, then checkpoint 2 of the same path, and hangs in fsync
# after writing every byte of it, before the rename: the worst moment to be killed.
_KILLED_WHILE_SAVING = """
import os, sys, time, torch
import tresnet_ft.training.checkpoint_io as checkpoint_io
path = sys.argv[1]
checkpoint_io.save_atomically({"global_step": 1, "w": torch.ones(1000)}, path)
def hang(fd):
    open(path + ".ready", "w").close()
    time.sleep(600)
checkpoint_io.os.fsync = hang
checkpoint_io.save_atomically({"global_step": 2, "w": torch.full((1000,), 2.0)}, path)
"""


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_while_writing_keeps_the_previous_checkpoint_and_the_next_save_cleans_up(
    tmp_path,
):
    path = tmp_path / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WHILE_SAVING, str(path)], env=env
    )
    try:
        deadline = time.monotonic() + 120
        while not Path(f"{path}.ready").exists():
            assert process.poll() is None and time.monotonic() < deadline, (
                "the writer did not get there"
            )
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    stale = partial_path(path)
    # The new checkpoint was fully written but never renamed into place: the old one stands.
    assert stale.exists() and torch.load(stale, weights_only=True)["global_step"] == 2
    assert torch.load(path, weights_only=True)["global_step"] == 1
    save_atomically({"global_step": 3}, path)
    assert (
        torch.load(path, weights_only=True)["global_step"] == 3 and not stale.exists()
    )


class _Payload:
    """Unpickling this object creates a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_with_a_pickle_payload_is_refused_and_never_runs(
    tmp_path, monkeypatch
):
    # Our explicit weights_only=True wins over this override.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    torch.save(
        {**_state(1.0), "callbacks": {"x": _Payload(marker)}}, tmp_path / "evil.ckpt"
    )
    with pytest.raises(UnsafeCheckpointError, match="Refusing to load .*evil.ckpt"):
        SafeCheckpointIO().load_checkpoint(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_missing_truncated_and_foreign_files_are_explained(tmp_path):
    io = SafeCheckpointIO()
    with pytest.raises(
        FileNotFoundError, match=r"nope.ckpt does not exist.*--ckpt_path last"
    ):
        io.load_checkpoint(tmp_path / "nope.ckpt")
    save_atomically(_state(1.0, size=100_000), tmp_path / "whole.ckpt")
    (tmp_path / "cut.ckpt").write_bytes((tmp_path / "whole.ckpt").read_bytes()[:50_000])
    with pytest.raises(
        ValueError, match=r"Could not read .*cut.ckpt \(50000 bytes\): it is truncated"
    ):
        io.load_checkpoint(tmp_path / "cut.ckpt")
    torch.save({"model": {"w": torch.ones(2)}}, tmp_path / "weights.pth")
    with pytest.raises(
        ValueError,
        match=r"weights.pth is not a training checkpoint.*--model.pretrained",
    ):
        io.load_checkpoint(tmp_path / "weights.pth")


# A tiny real fit (12 generated 32 px images, one epoch): best.ckpt is saved, then last.ckpt.
_TINY_FIT = [
    *(
        "fit --recipe quickstart --logger csv --trainer.max_epochs 1 --data.image_size 32 "
        "--data.batch_size 4 --trainer.log_every_n_steps 1 --trainer.enable_progress_bar false "
        "--trainer.enable_model_summary false "
        "--model.plots false --model.optimizer sgd"
    ).split(),
    *["--data.dataset_options", '{"num_images": 12}'],
]


@pytest.mark.slow
def test_a_full_disk_while_saving_is_one_line_and_the_saved_checkpoint_survives(
    tmp_path, monkeypatch, caplog
):
    """The disk fills up writing last.ckpt, after best.ckpt was saved: exit code 2 with one line
    (the file, the free space, that nothing was lost, the fix), not a bug's traceback."""
    from tresnet_ft.training import checkpoint_io

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    save = torch.save

    def disk_fills_on_last(obj, handle, *args, **kwargs):
        if Path(handle.name).name == partial_path(Path("last.ckpt")).name:
            handle.write(b"PK\x03\x04 the first megabytes")
            raise OSError(28, "No space left on device")
        return save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(checkpoint_io.torch, "save", disk_fills_on_last)
    line = error_line(caplog, [*_TINY_FIT, "--trainer.default_root_dir", str(tmp_path / "runs")])
    folder = tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints"
    assert line.startswith(f"error: No space left on device while writing {folder / 'last.ckpt'}; ")
    assert f" free in {folder}. Nothing was written to {folder / 'last.ckpt'}. Fix: free space" in line
    assert "checkpoints saved before are intact" in line and "--trainer.default_root_dir DIR." in line
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt"]
    assert "state_dict" in SafeCheckpointIO().load_checkpoint(folder / "best.ckpt")
