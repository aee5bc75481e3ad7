"""The LightningModule: a TResNet classifier with its loss, metrics, optimizer and schedule."""
from __future__ import annotations

import logging
import warnings
import math
from typing import Any, Optional, Union

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint

from ..losses import create_loss, resolve_loss
from .plot_callback import PlotCallback
from ..classifier.checkpoint import METADATA_KEY, ClassifierInfo, checked_metadata, trusted_hyperparameters
from ..data.preprocessing import EvalPreprocessing
from .ema import FusedEMAWeightAveraging, averaged_state_dict
from .freezing import freezing_callbacks
from .evaluation import EvaluationAccumulator, EvaluationResult
from ..models import convert_sync_norm, create_model, refresh_invertibility
from ..models.factory import pretrained_source
from ..models.weights import read_checkpoint
from .optim import SETTING_RANGES, build_optimizer, build_scheduler, check_settings, param_groups
from ..classifier.thresholds import Thresholds, tune_thresholds
from ..errors import InvalidValueError, TrainingDivergedError
from .checkpoint_fit import check_checkpoint_fits, checkpoint_setup
from .lightning_private import attached_trainer

log = logging.getLogger(__name__)

TASKS = ("single_label", "multi_label")
# For values every process already holds (the evaluation result, gathered once per epoch, and the
# thresholds tuned on it): logged without Lightning's sync_dist, which would all_reduce each key
# again. Lightning's advice to sync epoch-level values is for per-rank values, so it is silenced
# for exactly these keys (silence_epoch_sync_advice, at every setup).
SAME_ON_EVERY_RANK: dict[str, Any] = {"sync_dist": False}


def silence_epoch_sync_advice() -> None:
    """Drop Lightning's "use sync_dist=True" advice for the keys logged with :data:`SAME_ON_EVERY_RANK`."""
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\('(val|test|train)/"
                            r"(top1|top5|macro_accuracy|mAP|f1_|precision_|recall_|lr)'")


class TResNetClassifier(pl.LightningModule):
    """Fine-tune a TResNet for single-label classification or multi-label tagging.

    Args:
        arch: ``tresnet_m`` | ``tresnet_l`` | ``tresnet_xl`` | ``tresnet_v2_l`` (optionally ``.tag``).
        pretrained: ``None`` (random init), ``True`` (default tag), a tag, URL or weights file.
        head: ``linear`` or ``ml_decoder``; ``head_args`` go to its constructor.
        norm: ``inplace_abn`` (default, lean memory) or ``bn``.
        num_classes, classes, task: normally linked from the data (``task`` decides the loss,
            metrics and checkpoint monitor).
        preprocessing: how images are fed at evaluation (:class:`EvalPreprocessing`, its ``to_dict()``, or
            None for 224 px defaults); linked from the data and stored in checkpoints for prediction.
        loss: ``auto`` (cross-entropy with ``label_smoothing`` for single-label, ASL for
            multi-label), ``cross_entropy``, ``asl_single``, ``asl`` or ``bce``.
        asl_gamma_neg, asl_gamma_pos, asl_clip: ASL settings (``asl`` uses reduction "mean": the
            sum over all N·K elements divided by N·K, so learning rates match BCE's scale).
        optimizer: ``adamw`` | ``adam`` | ``sgd``; ``lr`` is the head's learning rate.
        backbone_lr_mult: backbone LR = ``lr × backbone_lr_mult``.
        layer_decay: per-stage LR decay inside the backbone (None: off).
        weight_decay: true (decoupled) weight decay; never on norms and biases.
        scheduler: ``cosine`` (with ``warmup_epochs``), ``onecycle`` (``pct_start``) or
            ``constant``; stepped every optimizer step.
        freeze_epochs, freeze_norm_stats: train only the head at first (see :class:`BackboneFreeze`);
            ignored, with one log line, when the backbone is not pretrained.
        ema_decay: keep an exponential moving average of the weights (Lightning's
            ``EMAWeightAveraging``, updated with one fused kernel: :class:`FusedEMAWeightAveraging`);
            validation, ``best.ckpt`` and export use it. None: off.
        drop_rate, drop_path_rate: dropout before the linear head; stochastic depth.
        residual_init: starting scale of each residual branch (0 as in TResNet); only matters
            without pretrained weights, where ~0.2 learns faster (see :class:`TResNet`).
        compile: ``torch.compile`` the network (first steps are slow while it compiles).
        plots: write curves, confusion matrix / AP and worst predictions as PNG (and to loggers).
        sync_norm: with several processes, compute batch-norm statistics over all of them
            (in-place ABN included; Lightning's ``sync_batchnorm`` does not know these layers).
        checkpoint_every_n_steps: also write ``last.ckpt`` every N optimizer steps, so a crash
            loses at most N steps (None: only at the end of every epoch).
    """

    def __init__(
        self,
        arch: str = "tresnet_m",
        pretrained: Optional[Union[bool, str]] = None,
        head: str = "linear",
        head_args: Optional[dict[str, Any]] = None,
        norm: str = "inplace_abn",
        num_classes: int = 5,
        classes: Optional[list[str]] = None,
        task: str = "single_label",
        preprocessing: Optional[Union[EvalPreprocessing, dict[str, Any]]] = None,
        loss: str = "auto",
        label_smoothing: float = 0.1,
        asl_gamma_neg: float = 4.0,
        asl_gamma_pos: float = 0.0,
        asl_clip: float = 0.05,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        backbone_lr_mult: float = 0.1,
        layer_decay: Optional[float] = None,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        scheduler: str = "cosine",
        warmup_epochs: float = 1.0,
        pct_start: float = 0.2,
        freeze_epochs: int = 0,
        freeze_norm_stats: bool = True,
        ema_decay: Optional[float] = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        residual_init: float = 0.0,
        compile: bool = False,
        plots: bool = True,
        sync_norm: bool = False,
        checkpoint_every_n_steps: int | None = None,
    ) -> None:
        super().__init__()
        # locals(): every argument by name, as save_hyperparameters reads them below
        preprocessing = _check_arguments(task, num_classes, classes, preprocessing, checkpoint_every_n_steps, locals())
        self.save_hyperparameters()  # reads the arguments' current values: preprocessing as a plain dict
        self.head_args = dict(head_args or {})
        if head == "linear" and drop_rate:
            self.head_args.setdefault("drop_rate", drop_rate)
        self.model = create_model(arch, num_classes, pretrained=pretrained, head=head, head_args=self.head_args,
                                  norm=norm, drop_path_rate=drop_path_rate, residual_init=residual_init)
        if compile:
            self.model.compile()
        self.task = task
        self.classes = list(classes) if classes is not None else [str(i) for i in range(num_classes)]
        # One nn.Module from the loss registry (tresnet_ft.losses.LOSSES); it owns no weights.
        self.loss_name = resolve_loss(loss, task)
        self.criterion = create_loss(self.loss_name, task, label_smoothing=label_smoothing, asl_gamma_neg=asl_gamma_neg,
                                     asl_gamma_pos=asl_gamma_pos, asl_clip=asl_clip)
        # One accumulator per stage feeds the logged metrics, the thresholds and the plots alike.
        self._evaluations = {stage: EvaluationAccumulator(task, num_classes) for stage in ("val", "test")}
        self._evaluation_results: dict[str, EvaluationResult] = {}
        self.thresholds: Optional[Thresholds] = None
        # (loss, step, epoch) of the last training step, until its value has been checked
        self._unchecked_loss: Optional[tuple[torch.Tensor, int, int]] = None

    @property
    def preprocessing(self) -> EvalPreprocessing:
        """How evaluation images are prepared (kept in ``hparams`` as a plain dict)."""
        return EvalPreprocessing.from_dict(self.hparams.preprocessing)

    # -- what the run monitors and which callbacks it needs -----------------------------------

    @property
    def monitor(self) -> str:
        """The metric that picks the best checkpoint: top-1 accuracy or mAP."""
        return "val/top1" if self.task == "single_label" else "val/mAP"

    def configure_callbacks(self) -> list[Callback]:
        callbacks: list[Callback] = [
            # best.ckpt holds the evaluated weights and the metadata, not the training state (a
            # quarter of last.ckpt with AdamW and EMA); a resumed run overwrites its own best.ckpt.
            ModelCheckpoint(monitor=self.monitor, mode="max", filename="best", auto_insert_metric_name=False,
                            enable_version_counter=False, save_weights_only=True),
            # Lightning's save_last=True skips epochs that did not improve the metric: last.ckpt has
            # callbacks of its own, every epoch and (optionally) every N steps.
            _last_checkpoint(every_n_epochs=1, save_on_train_epoch_end=True),
        ]
        if self.hparams.checkpoint_every_n_steps:
            callbacks.append(_last_checkpoint(every_n_train_steps=self.hparams.checkpoint_every_n_steps))
        if self.trainer.loggers:
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        if self.hparams.plots:
            callbacks.append(PlotCallback())
        fitting = self.trainer.state.fn == "fit"  # validate/test only read the (averaged) weights
        if fitting:
            pretrained = pretrained_source(self.hparams.arch, self.hparams.pretrained) is not None
            callbacks += freezing_callbacks(self.hparams.freeze_epochs, self.hparams.freeze_norm_stats, pretrained)
        if fitting and self.hparams.ema_decay:
            callbacks.append(FusedEMAWeightAveraging(decay=self.hparams.ema_decay))
        return callbacks

    # -- forward, loss, steps -----------------------------------------------------------------

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` float images -> logits ``[B, K]``."""
        return self.model(images)

    def compute_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Targets: ``[B]`` class indices, ``[B, K]`` soft labels (mixup) or multi-hot tags."""
        return self.criterion(logits, targets)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        loss = self.compute_loss(self(images), targets)
        # Checked at the next read of device data (the next step's one sync, a checkpoint, the
        # epoch's end), not here: reading it now would stall the GPU at every step.
        self._unchecked_loss = (loss.detach(), self.global_step, self.current_epoch)
        # sync_dist: with several processes the epoch value is the mean over all of them, not rank 0's.
        # Not prog_bar: Lightning would read it to the host at every step; ThroughputProgressBar
        # shows it, read every log_every_n_steps.
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=images.shape[0], sync_dist=True)
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """The step's one host sync: the norms' invertibility decisions and the last loss, read together."""
        self._check_loss(refresh_invertibility(self.model, *self._pending_loss()))

    def on_train_epoch_end(self) -> None:
        self._check_loss([loss.item() for loss in self._pending_loss()])
        # The learning rate at the epoch's end, for the curves plot (LearningRateMonitor logs every
        # step to the loggers; logging it from training_step cost a host-to-device copy per step).
        self.log("train/lr", float(self.trainer.optimizers[0].param_groups[0]["lr"]), **SAME_ON_EVERY_RANK)

    def _pending_loss(self) -> list[torch.Tensor]:
        return [] if self._unchecked_loss is None else [self._unchecked_loss[0]]

    def _check_loss(self, values: list[float]) -> None:
        """Raise if the last training loss (``values``: empty or its one value) is NaN or infinite."""
        if not values:
            return
        _, step, epoch = self._unchecked_loss
        self._unchecked_loss = None
        if not math.isfinite(values[0]):
            raise TrainingDivergedError(
                f"The training loss became {values[0]} at step {step} (epoch {epoch}). "
                "Likely causes: a learning rate too high for this batch size, or fp16 overflow "
                "(try --trainer.precision bf16-mixed or 32, or a lower --model.lr).")

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(-1) if self.task == "single_label" else logits.float().sigmoid()

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        """One evaluation batch: ``[B, 3, S, S]`` images and ``[B]`` labels or ``[B, K]`` tags."""
        images, targets = batch
        logits = self(images)
        self.log(f"{stage}/loss", self.compute_loss(logits, targets), on_epoch=True, prog_bar=True,
                 batch_size=images.shape[0], sync_dist=True)
        self._evaluations[stage].update(self._probabilities(logits), targets, self._unnormalise(images))

    def _unnormalise(self, images: torch.Tensor) -> torch.Tensor:
        """Back to [0, 1] for the worst-predictions plot (a no-op for TResNet's mean 0 / std 1)."""
        return self.preprocessing.to_unit_range(images)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def evaluation(self, stage: str) -> Optional[EvaluationResult]:
        """The last finished ``"val"`` or ``"test"`` pass over all processes (what the plots draw), or None."""
        return self._evaluation_results.get(stage)

    def _finish_evaluation(self, stage: str) -> EvaluationResult:
        """Gather the pass from all processes (once), keep it for the plots and log its metrics."""
        result = self._evaluations[stage].compute(device=self.device)
        self._evaluation_results[stage] = result
        self._log_evaluation(stage, result)
        return result

    def _log_evaluation(self, stage: str, result: EvaluationResult) -> None:
        for name, value in result.metrics.items():
            self.log(f"{stage}/{name}", value, prog_bar=name in ("top1", "mAP"), **SAME_ON_EVERY_RANK)

    def on_validation_epoch_end(self) -> None:
        result = self._finish_evaluation("val")
        if self.task == "multi_label" and len(result.classes_without_positives) < self.hparams.num_classes:
            self._tune_thresholds(result)

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")

    def _tune_thresholds(self, result: EvaluationResult) -> None:
        """Choose per-class decision thresholds on this validation pass (gathered: the same on all ranks)."""
        self.thresholds = tune_thresholds(result.scores, result.targets, weights=result.weights)
        self.log_dict({"val/f1_default": self.thresholds.f1_before, "val/f1_global": self.thresholds.f1_global,
                       "val/f1_tuned": self.thresholds.f1_after}, **SAME_ON_EVERY_RANK)

    # -- optimisation -------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = param_groups(self.model, hp.lr, hp.weight_decay, hp.backbone_lr_mult, hp.layer_decay)
        optimizer = build_optimizer(hp.optimizer, groups, momentum=hp.momentum)
        total = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        scheduler = build_scheduler(hp.scheduler, optimizer, total, warmup_steps=int(hp.warmup_epochs * steps_per_epoch),
                                    pct_start=hp.pct_start)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- self-contained checkpoints ------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Synchronise norms if asked; take class names from the DataModule and check that it
        prepares images as this model's checkpoints will say (``preprocessing``)."""
        silence_epoch_sync_advice()
        trainer = attached_trainer(self)
        if self.hparams.sync_norm and trainer is not None and trainer.world_size > 1:
            convert_sync_norm(self.model)
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "task"):
            return
        if datamodule.task != self.task or datamodule.num_classes != self.hparams.num_classes:
            raise InvalidValueError(
                f"The data is {datamodule.task} with {datamodule.num_classes} classes, but the model was built for "
                f"{self.task} with {self.hparams.num_classes}. Fix: build it with "
                "TResNetClassifier.from_datamodule(dm, ...) or pass task= and num_classes= to match.")
        self.classes = list(datamodule.classes)
        self.hparams.update(classes=self.classes)
        data = getattr(datamodule, "preprocessing", self.preprocessing)
        if data != self.preprocessing:  # the checkpoints would describe another input than validation's
            raise InvalidValueError(
                f"The data prepares evaluation images as {data}, but the model was built for {self.preprocessing}. "
                "Fix: build it with TResNetClassifier.from_datamodule(dm, ...) or pass preprocessing=dm.preprocessing.")

    def classifier_info(self) -> ClassifierInfo:
        hp = self.hparams
        return ClassifierInfo(arch=hp.arch.split(".")[0], classes=self.classes, task=self.task,
                              preprocessing=self.preprocessing, head=hp.head, head_args=dict(self.head_args),
                              norm=hp.norm, thresholds=self.thresholds.to_dict() if self.thresholds else None)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Never write weights that a NaN loss has already broken.
        self._check_loss([loss.item() for loss in self._pending_loss()])
        checkpoint[METADATA_KEY] = self.classifier_info().to_dict()
        if _weights_only(checkpoint):  # best.ckpt: the weights validation scored, EMA-averaged if EMA is on
            checkpoint["state_dict"] = averaged_state_dict(self.trainer, checkpoint["state_dict"])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainer = attached_trainer(self)
        if trainer is not None and trainer.state.fn == "fit" and _weights_only(checkpoint):
            path = self.trainer.ckpt_path
            raise InvalidValueError(f"{path} holds weights only (as best.ckpt does), not the optimizer and schedule "
                             "state that resuming needs. Fix: resume with --ckpt_path last, or start a new run "
                             f"from these weights with --model.pretrained {path}.")
        meta = checked_metadata(checkpoint, getattr(trainer, "ckpt_path", None))  # checked: the file is untrusted
        self._check_checkpoint_fits(meta, trusted_hyperparameters(checkpoint.get(self.CHECKPOINT_HYPER_PARAMS_KEY))[0])
        if meta.get("thresholds"):
            self.thresholds = Thresholds.from_dict(meta["thresholds"])
        if meta.get("classes"):
            self.classes = list(meta["classes"])

    def _check_checkpoint_fits(self, meta: dict[str, Any], hparams: dict[str, Any]) -> None:
        """Refuse a checkpoint of another task, class list, architecture, head or norm before its
        weights are loaded (Lightning's own error would be a wall of tensor size mismatches)."""
        ours = {"task": self.task, "num_classes": self.hparams.num_classes,
                "classes": self.classes if self.hparams.classes is not None else None,  # None: unnamed
                "arch": self.hparams.arch.split(".")[0], "head": self.hparams.head, "norm": self.hparams.norm}
        check_checkpoint_fits(checkpoint_setup(meta, hparams), ours, getattr(attached_trainer(self), "ckpt_path", None))

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
                             strict: Optional[bool] = None, **kwargs: Any) -> "TResNetClassifier":
        """Lightning's, except that the checkpoint cannot name weights to fetch or read (its
        ``pretrained`` and an ``arch`` tag are dropped; the weights come from the checkpoint itself).
        Keyword arguments still win."""
        restored, _ = trusted_hyperparameters(read_checkpoint(checkpoint_path).get(cls.CHECKPOINT_HYPER_PARAMS_KEY))
        kwargs = {"pretrained": None, **({"arch": restored["arch"]} if "arch" in restored else {}), **kwargs}
        return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict, **kwargs)

    @classmethod
    def from_datamodule(cls, datamodule: Any, **kwargs: Any) -> "TResNetClassifier":
        """Build a classifier whose task, classes and preprocessing come from ``datamodule``."""
        defaults = dict(num_classes=datamodule.num_classes, classes=list(datamodule.classes), task=datamodule.task,
                        preprocessing=datamodule.preprocessing)
        return cls(**{**defaults, **kwargs})


def _last_checkpoint(**trigger: Any) -> ModelCheckpoint:
    """A callback that writes ``last.ckpt`` (the newest state, whatever the metric did) at ``trigger``."""
    return ModelCheckpoint(filename=ModelCheckpoint.CHECKPOINT_NAME_LAST, monitor=None, save_top_k=1,
                           enable_version_counter=False, **trigger)


def _weights_only(checkpoint: dict[str, Any]) -> bool:
    """Whether Lightning wrote ``checkpoint`` with ``weights_only`` (it then has no optimizer states)."""
    return "optimizer_states" not in checkpoint


def _check_arguments(task: str, num_classes: int, classes: Optional[list[str]], preprocessing: Any,
                     checkpoint_every_n_steps: Optional[int], arguments: dict[str, Any]) -> dict[str, Any]:
    """Refuse arguments no run could use, before the network is built (``arguments``: all of them, by
    name; the numeric settings among them are checked against their ranges,
    :data:`~tresnet_ft.training.optim.SETTING_RANGES`). Returns ``preprocessing`` as a plain dict
    (:meth:`EvalPreprocessing.to_dict`) for ``hparams``: checkpoints stay ``weights_only``-readable."""
    _check_choice("task", task, TASKS)
    check_settings({name: arguments[name] for name in SETTING_RANGES})
    if checkpoint_every_n_steps is not None and checkpoint_every_n_steps < 1:
        raise InvalidValueError(f"Expected checkpoint_every_n_steps to be a positive integer or None, but got "
                                f"{checkpoint_every_n_steps}.")
    if classes is not None and len(classes) != num_classes:
        raise InvalidValueError(f"Expected {num_classes} class names, but got {len(classes)}.")
    return EvalPreprocessing.coerce(preprocessing).to_dict()


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidValueError(f"Expected {name} to be one of {list(choices)}, but got {value!r}.")
