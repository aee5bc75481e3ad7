"""What a fit prints: plain progress lines when stdout is not a terminal, a compact rich bar when
it is, one summary line at the end, and the command that resumes after Ctrl-C."""
from __future__ import annotations

import io
import logging
import re
import signal
import time

import lightning.pytorch as pl
import pytest
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from rich.console import Console

from run_helpers import column_by_step, metrics_rows, run_command
from test_callbacks import StepLossClassifier, loaders
from benchmarks.host_syncs import HostSyncCounter
from tresnet_ft.training.progress import FitReport, ThroughputProgressBar, resume_command

TINY_FIT = ["fit", "--recipe", "quickstart", "--logger", "csv", "--trainer.max_epochs", "1",
            "--data.dataset_options", '{"num_images": 16}', "--data.image_size", "32",
            "--data.batch_size", "4", "--trainer.log_every_n_steps", "2", "--model.plots", "false"]
STEP_LINE = re.compile(r"^epoch 0/0  step (\d+)/4  loss (\S+)  (\S+) img/s  ETA \d+:\d\d:\d\d$")
EPOCH_LINE = re.compile(r"^epoch 0/0 done  step 4/4  loss (\S+)  val/top1 (\S+)  (\S+) img/s  ETA 0:00:00$")
SUMMARY = re.compile(r"^Fit finished in (\d+):(\d\d):(\d\d): best val/top1 (\S+) at epoch (\d+), "
                     r"checkpoint (\S+)$")


class StepLoss(StepLossClassifier):
    """Logs the training loss per step and per epoch, and its validation metrics on the bar."""

    def evaluation_step(self, batch, stage: str):
        images, targets = batch
        logits = self(images)
        self.log(f"{stage}/loss", self.loss(logits, targets), prog_bar=True)
        self.log(f"{stage}/top1", (logits.argmax(1) == targets).float().mean(), prog_bar=True)


def tiny_trainer(tmp_path, callbacks, **kwargs) -> pl.Trainer:
    options = dict(max_epochs=2, accelerator="cpu", logger=False, enable_model_summary=False,
                   num_sanity_val_steps=0, log_every_n_steps=2, default_root_dir=tmp_path)
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **options)


# -- not a terminal: plain lines, then the summary (the real command, output piped) ----------------


@pytest.mark.slow
def test_a_piped_fit_prints_plain_progress_lines_and_a_summary(tmp_path):
    started = time.monotonic()
    proc = run_command(TINY_FIT, cwd=tmp_path)
    wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "quickstart" / "version_0"
    rows = metrics_rows(run)
    step_losses = column_by_step(rows, "train/loss_step")  # the CSV counts steps from 0
    val_top1 = column_by_step(rows, "val/top1")

    lines = proc.stdout.splitlines()
    assert "Epoch 0/0" not in proc.stdout and "img/s:" not in proc.stdout  # no frame of the live bar
    steps = [STEP_LINE.match(line) for line in lines if STEP_LINE.match(line)]
    # log_every_n_steps=2 over 4 batches: step 2, then the epoch's own line at step 4.
    assert [int(m.group(1)) for m in steps] == [2]
    assert float(steps[0].group(2)) == pytest.approx(step_losses[1], rel=1e-3)
    assert float(steps[0].group(3)) > 0
    epoch_lines = [EPOCH_LINE.match(line) for line in lines if EPOCH_LINE.match(line)]
    assert len(epoch_lines) == 1
    assert float(epoch_lines[0].group(1)) == pytest.approx(step_losses[3], rel=1e-3)
    assert float(epoch_lines[0].group(2)) == pytest.approx(val_top1[3], rel=1e-3)

    summaries = [SUMMARY.match(line) for line in proc.stderr.splitlines() if SUMMARY.match(line)]
    assert len(summaries) == 1, proc.stderr[-3000:]
    hours, minutes, seconds, best, epoch, checkpoint = summaries[0].groups()
    assert float(best) == pytest.approx(max(val_top1.values()), abs=5e-5)
    assert int(epoch) == 0
    assert (tmp_path / checkpoint).resolve() == (run / "checkpoints" / "best.ckpt").resolve()
    assert 0 < int(hours) * 3600 + int(minutes) * 60 + int(seconds) <= wall
    assert "Best checkpoint:" not in proc.stderr  # said once, in the summary
    # The summary ends the fit; only the run folder follows.
    after = proc.stderr.split(summaries[0].group(0), 1)[1].strip().splitlines()
    assert [line.split(":")[0] for line in after] == ["Run folder"]


# -- a terminal: the rich bar, compact ---------------------------------------------------------------


class RenderBarAt(Callback):
    """Renders the live bar, as an 80-column terminal would show it, at one training step."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.text = ""

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            screen = Console(width=80, file=io.StringIO(), force_terminal=True, color_system=None)
            with screen.capture() as captured:
                screen.print(trainer.progress_bar_callback.progress.get_renderable())
            self.text = captured.get()


def test_the_bar_keeps_its_metrics_on_two_lines_of_80_columns(tmp_path):
    train, val = loaders("single_label", num_images=400, batch_size=4)  # 100/100 batches
    bar = ThroughputProgressBar(console_kwargs={"force_terminal": True, "file": io.StringIO()})
    render = RenderBarAt(step=150)
    trainer = tiny_trainer(tmp_path, [bar, render], limit_val_batches=2)
    trainer.fit(StepLoss(), train, val)
    assert bar.plain is None  # a terminal: the live bar, no plain lines
    rows = [line.rstrip() for line in render.text.splitlines() if line.strip()]
    assert len(rows) <= 2, render.text
    assert rows[0].startswith("Epoch 1/1") and "50/100" in rows[0]
    text = " ".join(rows)
    for item in ("loss: ", "val/loss: ", "val/top1: ", "img/s: "):
        assert item in text, text
    assert "v_num" not in text and "it/s" not in text
    loss = re.search(r"(?<!/)loss: (\S+)", text).group(1)
    digits = loss.replace("-", "").replace(".", "").lstrip("0")  # leading zeros are not significant
    assert 1 <= len(digits) <= 3, loss  # three significant digits: 0.0957, 1.23, 12.3


def test_plain_lines_cost_no_host_sync(tmp_path, capsys):
    """Lines reuse the values the bar reads anyway: the same syncs as a bar that shows nothing."""
    counts = {}
    for name, refresh_rate in (("lines", 1), ("silent", 0)):
        train, _ = loaders("single_label", num_images=48, batch_size=4)
        bar = ThroughputProgressBar(refresh_rate=refresh_rate)
        trainer = tiny_trainer(tmp_path / name, [bar], limit_val_batches=0, max_epochs=1)
        with HostSyncCounter() as syncs:
            trainer.fit(StepLoss(), train)
        counts[name] = dict(syncs.counts)
        assert (bar.plain is not None) and bar.writes_lines == (refresh_rate > 0)
    output = capsys.readouterr().out
    assert len(re.findall(r"^epoch 0/0  step \d+/12", output, re.MULTILINE)) == 5  # steps 2..10
    assert len(re.findall(r"^epoch 0/0 done  step 12/12", output, re.MULTILINE)) == 1
    assert counts["lines"] == counts["silent"]


# -- Ctrl-C --------------------------------------------------------------------------------------------


class InterruptAt(Callback):
    """Raises KeyboardInterrupt at one training step, as Python does on Ctrl-C."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


@pytest.fixture
def restore_sigint():
    # Lightning ignores further Ctrl-C while it shuts down and never restores the handler.
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


@pytest.mark.parametrize("interrupt_at", [2, 8])
def test_ctrl_c_prints_the_command_that_resumes(tmp_path, monkeypatch, caplog, restore_sigint,
                                                interrupt_at):
    argv = ["/opt/venv/bin/tresnet-ft", "fit", "--recipe", "flowers102", "--ckpt_path", "best",
            "--model.lr", "1e-3"]
    monkeypatch.setattr("sys.argv", argv)
    monkeypatch.setattr("sys.orig_argv", ["/opt/venv/bin/python", *argv])
    train, val = loaders("single_label", num_images=24, batch_size=4)  # 6 steps per epoch
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    trainer = tiny_trainer(tmp_path, [FitReport(), checkpoints, InterruptAt(interrupt_at)],
                           enable_progress_bar=False)
    with caplog.at_level(logging.INFO, logger="tresnet_ft.training.progress"), pytest.raises(SystemExit) as exit_:
        trainer.fit(StepLoss(), train, val)
    assert exit_.value.code == 1  # Lightning's graceful shutdown
    (hint,) = [r.getMessage() for r in caplog.records if r.name == "tresnet_ft.training.progress"]
    if interrupt_at == 2:  # before the first epoch's end: nothing to resume from
        assert hint == ("Interrupted at epoch 0, step 2. No checkpoint was saved yet; to start again, "
                        "run:\n  /opt/venv/bin/tresnet-ft fit --recipe flowers102 --ckpt_path best "
                        "--model.lr 1e-3")
    else:
        last = tmp_path / "checkpoints" / "last.ckpt"
        assert last.is_file()
        assert hint == (f"Interrupted at epoch 1, step 8. To resume from the last checkpoint ({last}), "
                        "run:\n  /opt/venv/bin/tresnet-ft fit --recipe flowers102 --model.lr 1e-3 "
                        "--ckpt_path last")
    assert not any("Fit finished" in r.getMessage() for r in caplog.records)


def test_resume_command_rebuilds_how_the_program_was_started(tmp_path, monkeypatch):
    # python -m: argv[0] is the module's file; the interpreter's own arguments say how it ran.
    argv = ["/src/tresnet_ft/cli/__main__.py", "fit", "--recipe", "cifar10", "--ckpt_path=runs/x.ckpt"]
    assert resume_command(argv, ["python3", "-X", "dev", "-m", "tresnet_ft.cli", *argv[1:]]) == \
        "python3 -X dev -m tresnet_ft.cli fit --recipe cifar10 --ckpt_path last"
    # A console script found on PATH is shown by its name; arguments are quoted for the shell.
    script = tmp_path / "bin" / "tresnet-ft"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(script.parent))
    argv = [str(script), "fit", "--data.dataset_options", '{"num_images": 16}']
    assert resume_command(argv, ["/usr/bin/python3", *argv]) == \
        "tresnet-ft fit --data.dataset_options '{\"num_images\": 16}' --ckpt_path last"
    monkeypatch.setenv("PATH", "")
    assert resume_command(argv, ["/usr/bin/python3", *argv]).startswith(f"{script} fit ")


def test_the_summary_says_when_nothing_is_monitored(tmp_path, caplog):
    train, _ = loaders("single_label", num_images=8, batch_size=4)
    trainer = tiny_trainer(tmp_path, [FitReport()], limit_val_batches=0, max_epochs=1,
                           enable_progress_bar=False, enable_checkpointing=False)
    with caplog.at_level(logging.INFO, logger="tresnet_ft.training.progress"):
        trainer.fit(StepLoss(), train)
    (summary,) = [r.getMessage() for r in caplog.records if r.name == "tresnet_ft.training.progress"]
    assert re.fullmatch(r"Fit finished in 0:00:\d\d; no checkpoint keeps a best metric\.", summary)
