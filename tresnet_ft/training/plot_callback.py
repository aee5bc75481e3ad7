"""The diagnostic-plots callback (:class:`PlotCallback`); the progress bar is in :mod:`tresnet_ft.training.progress`.

:class:`PlotCallback` keeps no evaluation outputs of its own. It relies on this contract with the
LightningModule:

- ``pl_module.evaluation(stage)`` returns the last finished ``"val"`` or ``"test"`` pass as an
  :class:`~tresnet_ft.training.evaluation.EvaluationResult` (or None), as
  :class:`~tresnet_ft.training.module.TResNetClassifier` does from its
  :class:`~tresnet_ft.training.evaluation.EvaluationAccumulator`: gathered from every process,
  so the plots show the whole evaluation set. A module without the method gets the curves only
  (one debug message says why).
- ``pl_module.classes``: the ``K`` class names (else ``pl_module.hparams["classes"]``, else the
  indices as strings), checked against the result at the first evaluation (the sanity check
  when there is one), not after a long run.
"""
from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from matplotlib.figure import Figure

from . import plots
from .evaluation import EvaluationResult
from .progress import best_checkpoint_callback
from .validation_outputs import WorstPredictions, describe_worst
from ..errors import InvalidValueError

log = logging.getLogger(__name__)


class PlotCallback(Callback):
    """Keeps the metric history; draws, saves and logs it with the module's last evaluation.

    After every validation (not the sanity check) it appends one entry to :attr:`history`:
    ``epoch``, ``step`` and every scalar in ``trainer.callback_metrics`` except the training
    ones (keys starting with ``train_prefix``). Training metrics are added to that epoch's entry
    once the epoch has finished and Lightning has aggregated them, so no entry mixes one epoch's
    validation with an earlier epoch's training values. The history is saved in checkpoints, so
    a resumed run draws its whole curve.

    At the end of ``fit`` (from the last validation), of ``validate`` and of ``test`` (into
    ``plots/test``) it reads ``pl_module.evaluation(stage)`` (module docstring) and writes into
    ``<trainer.log_dir>/plots/``:

    - ``curves.png`` (not after ``test``; see :meth:`plot_curves`);
    - single-label: ``confusion_matrix.png``;
    - multi-label: ``per_class_ap.png`` and ``precision_recall.png`` (the curve needs every
      score: not drawn when the evaluation kept histograms instead, beyond its memory budget);
    - ``worst_predictions.png`` (when the evaluation kept images);

    and sends each figure to the TensorBoard (``add_figure``) and Weights & Biases
    (``log_image``) loggers under ``plots/<name>`` (``plots/test/<name>``). Other loggers are
    skipped. A plot that fails to draw is logged as a warning and does not end the run.

    Memory: nothing per image; the module's evaluation holds the outputs (bounded: see
    :mod:`tresnet_ft.training.evaluation`), so the figures show the same numbers as the logged
    metrics. Multi-GPU: the evaluation is gathered from every process, and global rank 0 draws
    the whole evaluation set. The curves use ``callback_metrics``, which are synchronised when
    logged with ``sync_dist=True``.

    Args:
        num_worst: the most worst-predicted images drawn (of those the evaluation kept).
        dirname: the folder, under ``trainer.log_dir``, the PNGs go to.
        train_prefix: the prefix of training metrics (``train/loss``, ``train_loss``, ...).
        max_matrix_classes: the most classes drawn as a full confusion matrix; beyond that the
            top confusions are drawn instead.
        multilabel_threshold: the probability above which a tag counts as predicted in the
            captions of the worst-predictions grid.
    """

    def __init__(
        self,
        num_worst: int = 16,
        dirname: str = "plots",
        train_prefix: str = "train",
        max_matrix_classes: int = 30,
        multilabel_threshold: float = 0.5,
    ) -> None:
        if num_worst < 0:
            raise InvalidValueError(f"Expected num_worst to be >= 0, but got {num_worst}.")
        self.num_worst = num_worst
        self.dirname = dirname
        self.train_prefix = train_prefix
        self.max_matrix_classes = max_matrix_classes
        self.multilabel_threshold = multilabel_threshold
        self.history: list[dict[str, float]] = []
        self.written: dict[str, Path] = {}  # name -> path of the PNGs written last
        self._finished_train_epoch: int | None = None
        self._validated = False  # whether this fit ran a validation besides the sanity check
        self._missing_evaluation_logged = False

    # -- history --------------------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validated = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._checked_classes(pl_module, "val")  # fails at the first evaluation, not after the run
        if trainer.sanity_checking:
            return
        self._validated = True
        metrics = {k: v for k, v in _scalars(trainer.callback_metrics).items()
                   if not k.startswith(self.train_prefix)}
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step,
                             **metrics})
        if trainer.state.fn == "validate":
            self._write_plots(trainer, pl_module, stage="validate")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Metrics the module logs in its own on_train_epoch_end arrive after this hook, so the
        # epoch's training metrics are read at the next epoch's start or at the end of fit.
        self._finished_train_epoch = trainer.current_epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record_training_metrics(trainer)

    def _record_training_metrics(self, trainer: pl.Trainer) -> None:
        epoch, self._finished_train_epoch = self._finished_train_epoch, None
        if epoch is None:
            return
        metrics = {k: v for k, v in _scalars(trainer.callback_metrics).items()
                   if k.startswith(self.train_prefix)}
        last = self.history[-1] if self.history else None
        if last is not None and last.get("epoch") == epoch and not any(
                k.startswith(self.train_prefix) for k in last):
            last.update(metrics)
        elif metrics:  # an epoch without validation
            self.history.append({"epoch": epoch, "step": trainer.global_step, **metrics})

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(entry) for entry in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(entry) for entry in state_dict.get("history", [])]

    # -- writing --------------------------------------------------------------------------------

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record_training_metrics(trainer)
        self._write_plots(trainer, pl_module, stage="fit")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._checked_classes(pl_module, "test")
        self._write_plots(trainer, pl_module, stage="test")

    def _write_plots(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        root = trainer.log_dir or trainer.default_root_dir  # a collective: called on every rank
        if not trainer.is_global_zero:
            return
        folder = Path(root) / self.dirname / ("test" if stage == "test" else "")
        tag_prefix = f"{self.dirname}/test/" if stage == "test" else f"{self.dirname}/"
        self.written = {}
        for name, draw in self._figures(trainer, pl_module, stage).items():
            try:
                figure = draw()
            except Exception:  # a broken plot must not cost the end of a finished run
                log.warning("PlotCallback: could not draw %s.", name, exc_info=True)
                continue
            self.written[name] = plots.save_figure(figure, folder / f"{name}.png")
            _send_to_loggers(trainer, tag_prefix + name, figure)
        if self.written:
            log.info("Plots written to %s: %s", folder, ", ".join(sorted(self.written)))

    def _figures(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                 stage: str) -> dict[str, Callable[[], Figure]]:
        """The figures to draw, by file name, as deferred calls."""
        figures: dict[str, Callable[[], Figure]] = {}
        if stage != "test" and self.history:
            figures["curves"] = lambda: self.plot_curves(trainer)
        result = None if stage == "fit" and not self._validated else self._evaluation(pl_module, stage)
        if result is None or result.num_samples == 0:
            return figures
        classes = self._checked_classes(pl_module, stage)
        if result.task == "single_label":
            figures["confusion_matrix"] = lambda: plots.plot_confusion_matrix(
                result.confusion_matrix, classes, max_classes=self.max_matrix_classes)
        else:
            figures["per_class_ap"] = lambda: plots.plot_per_class_ap(result.per_class_ap, classes)
            if result.weights is None:
                figures["precision_recall"] = lambda: plots.plot_precision_recall(
                    result.scores, result.targets, classes)
            else:
                log.info("PlotCallback: no precision-recall curve: the evaluation kept score histograms, "
                         "not every score (it was over its memory budget).")
        if result.worst is not None and self.num_worst > 0:
            figures["worst_predictions"] = lambda: self._plot_worst(result.worst, classes)
        return figures

    def _evaluation(self, pl_module: pl.LightningModule, stage: str) -> EvaluationResult | None:
        """The module's last ``val`` (``test`` after testing) pass, or None."""
        evaluation = getattr(pl_module, "evaluation", None)
        if evaluation is None:
            if not self._missing_evaluation_logged:
                log.debug("PlotCallback: %s has no evaluation(stage) method; only the curves are drawn.",
                          type(pl_module).__name__)
                self._missing_evaluation_logged = True
            return None
        return evaluation("test" if stage == "test" else "val")

    def _checked_classes(self, pl_module: pl.LightningModule, stage: str) -> list[str] | None:
        """The class names for the module's last ``stage`` pass (checked against it), or None."""
        result = self._evaluation(pl_module, stage)
        return None if result is None else _class_names(pl_module, result.num_classes)

    def plot_curves(self, trainer: pl.Trainer) -> Figure:
        """The curves of :attr:`history` with the step-level training loss and learning rate.

        Step-level values come from the CSV logger's ``metrics.csv`` (the module's
        ``train/loss_step`` and LearningRateMonitor's ``lr-*``, every ``log_every_n_steps``):
        the logger already holds them as numbers, and it continues the file when a run resumes.
        Reading them from ``callback_metrics`` instead would copy each loss to the host a second
        time. Without a CSV logger the curves are per epoch only. The best checkpoint's
        monitored metric goes on the loss panel's second axis (:func:`plots.plot_training_curves`).
        Global rank 0 only (the CSV file is written there).
        """
        best = best_checkpoint_callback(trainer)
        steps = _csv_rows(trainer, self._is_step_key)
        return plots.plot_training_curves(self.history, steps=steps,
                                          monitor=best.monitor if best else None)

    def _is_step_key(self, key: str) -> bool:
        if key.endswith(("-momentum", "-weight_decay")):  # LearningRateMonitor's other options
            return False
        if key.startswith(self.train_prefix):  # train/lr is the module's per-epoch value
            return "loss" in key and key.endswith("_step")  # Lightning's per-step twin
        return plots.is_learning_rate_key(key)

    def _plot_worst(self, worst: WorstPredictions, classes: list[str]) -> Figure:
        worst = worst.select(torch.arange(min(self.num_worst, len(worst))))
        true, predicted, confidences, correct = describe_worst(
            worst, classes, self.multilabel_threshold)
        return plots.plot_worst_predictions(worst.images, true, predicted, confidences,
                                            correct=correct)


def _send_to_loggers(trainer: pl.Trainer, tag: str, figure: Figure) -> None:
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            # close=False: the same figure still goes to the other loggers.
            logger.experiment.add_figure(tag, figure, global_step=trainer.global_step, close=False)
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[plots.figure_to_array(figure)],
                             step=trainer.global_step)
        else:
            log.debug("PlotCallback: %s takes no images; %s not sent.", type(logger).__name__, tag)


def _csv_rows(trainer: pl.Trainer, wanted: Callable[[str], bool]) -> list[dict[str, float]]:
    """``{"step": s, key: value}`` for each row of the first CSV logger's file with a wanted key."""
    logger = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
    if logger is None:
        return []
    logger.save()  # rows logged since its last flush are still in memory
    path = Path(logger.experiment.metrics_file_path)
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        rows = [_numbers(row, wanted) for row in csv.DictReader(handle)]
    return [row for row in rows if len(row) > 1 and "step" in row]


def _numbers(row: Mapping[str, str], wanted: Callable[[str], bool]) -> dict[str, float]:
    numbers = {}
    for key, text in row.items():
        if text and (key == "step" or wanted(key)):
            try:
                numbers[key] = float(text)
            except ValueError:  # not a number: not a curve
                continue
    return numbers


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The one-number entries of ``metrics`` as floats."""
    scalars = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            scalars[key] = value.item()
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            scalars[key] = float(value)
    return scalars


def _class_names(pl_module: pl.LightningModule, num_classes: int) -> list[str]:
    classes = getattr(pl_module, "classes", None) or _hparam(pl_module, "classes")
    if classes is None:
        return [str(i) for i in range(num_classes)]
    if len(classes) != num_classes:
        raise InvalidValueError(
            f"Expected {num_classes} class names (the evaluation has {num_classes} classes), "
            f"but pl_module.classes has {len(classes)}."
        )
    return [str(name) for name in classes]


def _hparam(pl_module: pl.LightningModule, name: str) -> Any:
    hparams = getattr(pl_module, "hparams", None)
    return hparams.get(name) if isinstance(hparams, Mapping) else None


__all__ = ["PlotCallback"]
