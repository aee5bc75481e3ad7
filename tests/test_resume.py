"""A training run killed with SIGKILL mid-epoch resumes with ``--ckpt_path last`` and ends where an
uninterrupted run ends: same epoch and step, same learning rate at every step, EMA state carried on.

Three ``tresnet-ft fit`` processes on generated data (32 px, 3 steps per epoch, 2 epochs, EMA on,
``last.ckpt`` every 2 steps): one killed after step 5 (its newest checkpoint is from step 4, one
batch into the second epoch), its resume, and an uninterrupted run for comparison.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from tests.run_helpers import (
    KillAtStep,
    callback_arg,
    column_by_step,
    metrics_rows,
    run_command,
)
from tresnet_ft.cli.command import main

STEPS_PER_EPOCH, EPOCHS, EVERY_N_STEPS, KILL_AT = 3, 2, 2, 5
# EMA is on in the quickstart recipe; SGD keeps the checkpoints smaller than AdamW (one state tensor).
FIT = [
    *(
        f"fit --recipe quickstart --logger csv --trainer.max_epochs {EPOCHS} --data.image_size 32 "
        "--data.batch_size 4 --trainer.log_every_n_steps 1 --trainer.enable_progress_bar false "
        "--trainer.enable_model_summary false --model.plots false --model.optimizer sgd "
        f"--model.checkpoint_every_n_steps {EVERY_N_STEPS}"
    ).split(),
    *["--data.dataset_options", '{"num_images": 12}'],
]
LR = "lr-SGD/head"


def _checkpoint(run: Path) -> dict:
    return torch.load(
        run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_ends_like_an_uninterrupted_run(tmp_path):
    crashed, straight = tmp_path / "crashed", tmp_path / "straight"
    crashed.mkdir(), straight.mkdir()
    run = crashed / "runs" / "quickstart" / "version_0"

    killed = run_command([*FIT, callback_arg(KillAtStep, step=KILL_AT)], cwd=crashed)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    at_crash = _checkpoint(run)
    resumed_from = at_crash["global_step"]
    assert (
        resumed_from == KILL_AT - KILL_AT % EVERY_N_STEPS == 4
    )  # the step checkpoint, not an epoch end
    assert resumed_from % STEPS_PER_EPOCH != 0 and at_crash["epoch"] == 1  # mid-epoch
    assert (
        at_crash["averaging_state"]["n_averaged"] == resumed_from
    )  # EMA state is in the checkpoint

    resumed = run_command([*FIT, "--ckpt_path", "last"], cwd=crashed)
    _ok(resumed)
    assert f"Resuming run {run}" in resumed.stderr
    _ok(run_command(FIT, cwd=straight))

    # One run folder: the resume wrote into the run it continued, and no partial file is left.
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best.ckpt",
        "last.ckpt",
    ]

    final, reference = (
        _checkpoint(run),
        _checkpoint(straight / "runs" / "quickstart" / "version_0"),
    )
    assert final["global_step"] == reference["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert final["epoch"] == reference["epoch"]
    # EMA restored, not re-initialised: it averaged every step of both processes.
    assert (
        final["averaging_state"]["n_averaged"]
        == reference["averaging_state"]["n_averaged"]
        == final["global_step"]
    )
    assert set(final["state_dict"]) == set(final["current_model_state"])

    # metrics.csv continues across the crash: the learning rate of every step, before and after
    # the resume point, equals the uninterrupted run's; validation ran at the same steps.
    rows, reference_rows = (
        metrics_rows(run),
        metrics_rows(straight / "runs" / "quickstart" / "version_0"),
    )
    lrs, reference_lrs = column_by_step(rows, LR), column_by_step(reference_rows, LR)
    assert sorted(lrs) == list(range(EPOCHS * STEPS_PER_EPOCH))
    assert lrs == reference_lrs
    assert (
        len({round(lr, 12) for step, lr in lrs.items() if step >= resumed_from}) > 1
    )  # a real schedule
    assert sorted(column_by_step(rows, "val/top1")) == sorted(
        column_by_step(reference_rows, "val/top1")
    )
    assert len(rows) == len(
        reference_rows
    )  # the replayed step's rows from before the crash were dropped


def test_ckpt_path_last_without_a_previous_run_is_one_clear_line(
    tmp_path, monkeypatch, caplog
):
    from tresnet_ft.training import loggers

    monkeypatch.setattr(loggers, "RUNS_DIR", tmp_path / "runs")
    assert main([*FIT, "--ckpt_path", "last"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith(
        "error: --ckpt_path last: no last.ckpt found at"
    )
    assert (
        str(
            tmp_path / "runs" / "quickstart" / "version_*" / "checkpoints" / "last.ckpt"
        )
        in errors[0]
    )
    assert "without --ckpt_path" in errors[0]
