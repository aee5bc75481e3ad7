"""What a fit says when it ends: the summary line, and after Ctrl-C the command that resumes it."""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from .checkpoints import best_checkpoint_callback, last_checkpoint, saved_epoch
from .formatting import format_duration

# The package's one logger name, as before the split: users and tests filter on it.
log = logging.getLogger(__package__)


class FitReport(Callback):
    """One line at the end of every fit, and after Ctrl-C the command that resumes the run.

    The summary names the best checkpoint's monitored metric, its value, the epoch it was
    reached in (read from the checkpoint), the checkpoint's path and the fit's duration. It is
    logged at ``teardown``, after the other callbacks' end-of-fit messages.

    On Ctrl-C Lightning stops gracefully (it calls ``on_exception`` with the KeyboardInterrupt,
    then exits with status 1) but saves no checkpoint, so a run resumes from its last saved
    ``last.ckpt``: the hint gives the command line of this process (:func:`resume_command`) with
    ``--ckpt_path last``, or says that no checkpoint was saved yet. Both messages go to the
    ``tresnet_ft.training.progress`` logger on global rank 0 only.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._started: float | None = None
        self._fit_ended = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started, self._fit_ended = self._clock(), False

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_ended = True

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self._fit_ended and trainer.is_global_zero:
            self._fit_ended = False
            log.info(fit_summary(trainer, self._clock() - self._started))

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt) and trainer.is_global_zero:
            log.info(resume_hint(trainer))


def fit_summary(trainer: pl.Trainer, seconds: float) -> str:
    """``Fit finished in 0:04:41: best val/top1 0.9612 at epoch 1, checkpoint runs/.../best.ckpt``."""
    text = f"Fit finished in {format_duration(seconds)}"
    best = best_checkpoint_callback(trainer)
    if best is None:
        return text + "; no checkpoint keeps a best metric."
    if best.best_model_score is None or not best.best_model_path:
        return text + f"; no best checkpoint ({best.monitor} was never logged)."
    epoch = saved_epoch(best.best_model_path)
    at = "" if epoch is None else f" at epoch {epoch}"
    return (f"{text}: best {best.monitor} {float(best.best_model_score):.4f}{at}, "
            f"checkpoint {best.best_model_path}")


def resume_hint(trainer: pl.Trainer, argv: Sequence[str] | None = None,
                orig_argv: Sequence[str] | None = None) -> str:
    """What to run after an interrupted fit: resume from ``last.ckpt``, or start again."""
    where = f"Interrupted at epoch {trainer.current_epoch}, step {trainer.global_step}."
    last = last_checkpoint(trainer)
    if last is None:
        command = _shell_command(argv, orig_argv, drop=(), extra=())
        return f"{where} No checkpoint was saved yet; to start again, run:\n  {command}"
    command = resume_command(argv, orig_argv)
    return f"{where} To resume from the last checkpoint ({last}), run:\n  {command}"


def resume_command(argv: Sequence[str] | None = None,
                   orig_argv: Sequence[str] | None = None) -> str:
    """This process's command line with ``--ckpt_path last`` in place of any ``--ckpt_path``.

    ``argv`` defaults to ``sys.argv`` and ``orig_argv`` to ``sys.orig_argv``; the latter gives the
    interpreter part of ``python -m package.module`` or ``python script.py``.

    Example:
        >>> resume_command(["/venv/bin/tresnet-ft", "fit", "--recipe", "flowers102"], [])
        '/venv/bin/tresnet-ft fit --recipe flowers102 --ckpt_path last'
    """
    return _shell_command(argv, orig_argv, drop=("--ckpt_path",), extra=("--ckpt_path", "last"))


def _shell_command(argv: Sequence[str] | None, orig_argv: Sequence[str] | None,
                   drop: Sequence[str], extra: Sequence[str]) -> str:
    argv = list(sys.argv if argv is None else argv)
    orig_argv = list(getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv)
    return shlex.join([*_program(argv, orig_argv), *_without_options(argv[1:], drop), *extra])


def _program(argv: list[str], orig_argv: list[str]) -> list[str]:
    """How the user started this program: ``python -m mod``, ``python x.py`` or ``tresnet-ft``."""
    if argv[0].endswith(".py") and len(orig_argv) >= len(argv):
        return orig_argv[:len(orig_argv) - len(argv) + 1]
    found = shutil.which(os.path.basename(argv[0]))
    if found and os.path.exists(argv[0]) and os.path.samefile(found, argv[0]):
        return [os.path.basename(argv[0])]  # on PATH: the short name runs the same program
    return [argv[0]]


def _without_options(args: list[str], names: Sequence[str]) -> list[str]:
    """``args`` without ``--name value`` and ``--name=value`` for each of ``names``."""
    kept, skip_next = [], False
    for arg in args:
        if skip_next:
            skip_next = False
        elif arg in names:
            skip_next = True
        elif not arg.startswith(tuple(f"{name}=" for name in names)):
            kept.append(arg)
    return kept
