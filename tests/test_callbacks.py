"""PlotCallback and ThroughputProgressBar in real Trainer runs with a tiny module and loggers."""
from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import cv2
import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from tresnet_ft.training import plots
from tresnet_ft.training.evaluation import EvaluationAccumulator
from tresnet_ft.training.plot_callback import PlotCallback
from tresnet_ft.training.progress import ThroughputMeter, ThroughputProgressBar, count_images

NUM_CLASSES, IMAGE_SIZE = 3, 8
SINGLE_LABEL_PNGS = {"curves", "confusion_matrix", "worst_predictions"}
MULTI_LABEL_PNGS = {"curves", "per_class_ap", "precision_recall", "worst_predictions"}


class TinyClassifier(pl.LightningModule):
    """A linear classifier that keeps the PlotCallback contract: an evaluation per stage."""

    def __init__(self, task: str = "single_label") -> None:
        super().__init__()
        self.task = task
        self.classes = ["cat", "dog", "bird"]
        self.linear = torch.nn.Linear(3 * IMAGE_SIZE * IMAGE_SIZE, NUM_CLASSES)
        self.evaluations = {stage: EvaluationAccumulator(task, NUM_CLASSES) for stage in ("val", "test")}
        self.results = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images.flatten(1))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.task == "single_label":
            return F.cross_entropy(logits, targets)
        return F.binary_cross_entropy_with_logits(logits, targets)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        loss = self.loss(self(images), targets)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        return self.evaluation_step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self.evaluation_step(batch, "test")

    def evaluation_step(self, batch, stage: str):
        images, targets = batch
        logits = self(images)
        self.log(f"{stage}/loss", self.loss(logits, targets))
        if self.task == "single_label":
            probs = logits.softmax(dim=1)
            self.log(f"{stage}/top1", (probs.argmax(1) == targets).float().mean())
        else:
            probs = logits.sigmoid()
        self.evaluations[stage].update(probs, targets, images)

    def on_validation_epoch_end(self):
        self.results["val"] = self.evaluations["val"].compute()

    def on_test_epoch_end(self):
        self.results["test"] = self.evaluations["test"].compute()

    def evaluation(self, stage: str):
        return self.results.get(stage)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def loaders(task: str, num_images: int = 24, batch_size: int = 8):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(num_images, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    if task == "single_label":
        targets = torch.randint(0, NUM_CLASSES, (num_images,), generator=generator)
    else:
        targets = (torch.rand(num_images, NUM_CLASSES, generator=generator) < 0.5).float()
    dataset = TensorDataset(images, targets)
    return DataLoader(dataset, batch_size=batch_size), DataLoader(dataset, batch_size=batch_size)


def make_trainer(tmp_path: Path, callbacks, loggers=None, **kwargs) -> pl.Trainer:
    if loggers is None:
        loggers = [CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")]
    options = dict(max_epochs=2, accelerator="cpu", enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0)
    options.update(kwargs)
    return pl.Trainer(default_root_dir=tmp_path, logger=loggers, callbacks=callbacks, **options)


def assert_valid_pngs(folder: Path, names: set[str]) -> None:
    assert {path.stem for path in folder.glob("*.png")} == names
    for name in names:
        image = cv2.imread(str(folder / f"{name}.png"))
        assert image is not None and image.ndim == 3 and min(image.shape[:2]) > 100


def csv_metrics(logger: CSVLogger) -> list[dict[str, str]]:
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def tensorboard_image_tags(log_dir: str) -> set[str]:
    from tensorboard.backend.event_processing import event_accumulator  # a dependency: fail, never skip
    events = event_accumulator.EventAccumulator(log_dir, size_guidance={"images": 0})
    events.Reload()
    return set(events.Tags()["images"])


# -- PlotCallback -------------------------------------------------------------------------------


def test_single_label_fit_writes_pngs_history_and_tensorboard_images(tmp_path):
    train, val = loaders("single_label")
    callback = PlotCallback(num_worst=4)
    model = TinyClassifier()
    trainer = make_trainer(tmp_path, [callback])
    trainer.fit(model, train, val)

    # The PNGs go to trainer.log_dir (the first logger's folder).
    assert trainer.log_dir == trainer.loggers[0].log_dir
    assert_valid_pngs(Path(trainer.log_dir) / "plots", SINGLE_LABEL_PNGS)

    # One history entry per epoch with the values the CSV logger wrote for that epoch.
    assert [entry["epoch"] for entry in callback.history] == [0, 1]
    rows = csv_metrics(trainer.loggers[0])
    for entry in callback.history:
        for key in ("train/loss", "val/loss", "val/top1"):
            logged = [float(row[key]) for row in rows if row[key] and int(row["epoch"]) == entry["epoch"]]
            assert logged == [pytest.approx(entry[key])], key

    # The plotted evaluation is the module's last validation: recompute it from the final model.
    images, targets = val.dataset.tensors
    with torch.no_grad():
        probs = model(images).softmax(dim=1)
    expected = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    for true, predicted in zip(targets.tolist(), probs.argmax(1).tolist()):
        expected[true, predicted] += 1
    assert torch.equal(model.evaluation("val").confusion_matrix, expected)
    p_true = probs[torch.arange(len(targets)), targets]
    assert torch.allclose(model.evaluation("val").worst.badness[:4], 1 - p_true.sort().values[:4])

    assert tensorboard_image_tags(trainer.loggers[1].log_dir) == {
        f"plots/{name}" for name in SINGLE_LABEL_PNGS}


def test_multi_label_fit_writes_ap_and_precision_recall(tmp_path):
    train, val = loaders("multi_label")
    callback = PlotCallback(num_worst=5)
    model = TinyClassifier("multi_label")
    trainer = make_trainer(tmp_path, [callback])
    trainer.fit(model, train, val)

    assert_valid_pngs(Path(trainer.log_dir) / "plots", MULTI_LABEL_PNGS)
    images, targets = val.dataset.tensors
    with torch.no_grad():
        probs = model(images).sigmoid()
    result = model.evaluation("val")
    assert torch.allclose(result.scores, probs, atol=1e-3) and torch.equal(result.targets.float(), targets)
    assert len(result.worst.images) == 16  # the module keeps 16; the callback draws 5 of them
    assert tensorboard_image_tags(trainer.loggers[1].log_dir) == {
        f"plots/{name}" for name in MULTI_LABEL_PNGS}


def test_wandb_offline_run_receives_the_plots(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import wandb as wandb_loggers  # wandb is a dependency
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train, val = loaders("single_label")
    logger = wandb_loggers.WandbLogger(save_dir=str(tmp_path), offline=True, project="plots-test")
    trainer = make_trainer(tmp_path, [PlotCallback(num_worst=2)], loggers=[logger], max_epochs=1)
    try:
        trainer.fit(TinyClassifier(), train, val)
        run_dir = Path(logger.experiment.dir).parent
    finally:
        logger.experiment.finish()
    # wandb stores each logged image as media/images/<key>_<wandb step>_<hash>.png.
    media = {re.sub(r"_\d+_[0-9a-f]+$", "", path.stem): path
             for path in (run_dir / "files" / "media" / "images" / "plots").glob("*.png")}
    assert set(media) == SINGLE_LABEL_PNGS
    # With WandbLogger first, trainer.log_dir is its save_dir.
    assert_valid_pngs(tmp_path / "plots", SINGLE_LABEL_PNGS)
    for name, path in media.items():  # the same rendering as the PNG file
        assert cv2.imread(str(path)).shape == cv2.imread(str(tmp_path / "plots" / f"{name}.png")).shape


def test_validate_and_test_write_their_own_plots(tmp_path):
    _, val = loaders("single_label")
    trainer = make_trainer(tmp_path, [PlotCallback()], loggers=[CSVLogger(tmp_path)])
    model = TinyClassifier()
    trainer.validate(model, val)
    plots_dir = Path(trainer.log_dir) / "plots"
    assert_valid_pngs(plots_dir, SINGLE_LABEL_PNGS)
    trainer.test(model, val)
    assert_valid_pngs(plots_dir / "test", {"confusion_matrix", "worst_predictions"})


def test_plots_draw_the_modules_evaluation_and_keep_no_copy(tmp_path, monkeypatch):
    drawn = {}
    for name in ("plot_confusion_matrix", "plot_worst_predictions"):
        def draw(*args, _name=name, _original=getattr(plots, name), **kwargs):
            drawn[_name] = args
            return _original(*args, **kwargs)
        monkeypatch.setattr(plots, name, draw)
    _, val = loaders("single_label")
    callback, model = PlotCallback(num_worst=3), TinyClassifier()
    make_trainer(tmp_path, [callback], loggers=False).validate(model, val)
    result = model.evaluation("val")
    assert drawn["plot_confusion_matrix"][0] is result.confusion_matrix
    assert torch.equal(drawn["plot_worst_predictions"][0], result.worst.images[:3])
    assert not any(isinstance(value, torch.Tensor) for value in vars(callback).values())


class WithoutEvaluation(TinyClassifier):
    evaluation = None  # a module that keeps no evaluation for the plots


def test_without_an_evaluation_only_curves_are_written(tmp_path, caplog):
    train, val = loaders("single_label")
    callback = PlotCallback()
    trainer = make_trainer(tmp_path, [callback], loggers=[CSVLogger(tmp_path)])
    with caplog.at_level(logging.DEBUG, logger="tresnet_ft.training.plot_callback"):
        trainer.fit(WithoutEvaluation(), train, val)
    assert_valid_pngs(Path(trainer.log_dir) / "plots", {"curves"})
    assert "WithoutEvaluation has no evaluation(stage) method" in caplog.text
    assert [entry["epoch"] for entry in callback.history] == [0, 1]


def test_no_validation_at_all_keeps_training_curves(tmp_path):
    train, _ = loaders("single_label")
    callback = PlotCallback()
    trainer = make_trainer(tmp_path, [callback], loggers=[CSVLogger(tmp_path)],
                           limit_val_batches=0)
    trainer.fit(TinyClassifier(), train)
    assert [sorted(entry) for entry in callback.history] == [["epoch", "step", "train/loss"]] * 2
    assert_valid_pngs(Path(trainer.log_dir) / "plots", {"curves"})


def test_training_metrics_join_the_last_validation_of_their_own_epoch(tmp_path):
    class LogsAtEpochEnd(TinyClassifier):
        def on_train_epoch_end(self):  # logged after the callbacks' on_train_epoch_end
            self.log("train/epoch_marker", 100.0 + self.current_epoch)

    train, val = loaders("single_label", num_images=48)
    callback = PlotCallback()
    trainer = make_trainer(tmp_path, [callback], loggers=False, val_check_interval=0.5)
    trainer.fit(LogsAtEpochEnd(), train, val)
    # Two validations per epoch; the epoch's training metrics go to the second one only.
    assert [(e["epoch"], e["step"]) for e in callback.history] == [(0, 3), (0, 6), (1, 9), (1, 12)]
    assert [e.get("train/epoch_marker") for e in callback.history] == [None, 100.0, None, 101.0]
    assert all("val/top1" in e for e in callback.history)


def test_history_survives_a_checkpoint_round_trip(tmp_path):
    train, val = loaders("single_label")
    trainer = make_trainer(tmp_path, [PlotCallback()], loggers=False, max_epochs=1)
    trainer.fit(TinyClassifier(), train, val)
    path = tmp_path / "one_epoch.ckpt"
    trainer.save_checkpoint(path)

    resumed = PlotCallback()
    trainer = make_trainer(tmp_path, [resumed], loggers=False, max_epochs=2)
    trainer.fit(TinyClassifier(), train, val, ckpt_path=path)
    assert [entry["epoch"] for entry in resumed.history] == [0, 1]
    assert_valid_pngs(tmp_path / "plots", SINGLE_LABEL_PNGS)  # no logger: default_root_dir


def test_contract_violations_fail_at_the_first_batch(tmp_path):
    class WrongTargets(TinyClassifier):
        def validation_step(self, batch, batch_idx):
            images, targets = batch
            self.evaluations["val"].update(self(images).softmax(1), F.one_hot(targets, NUM_CLASSES), images)

    _, val = loaders("single_label")
    trainer = make_trainer(tmp_path, [PlotCallback()], loggers=False)
    with pytest.raises(ValueError, match=r"single_label targets of shape \[8\] .* \[8, 3\]"):
        trainer.validate(WrongTargets(), val)


def test_a_class_list_of_the_wrong_length_fails_at_the_first_evaluation(tmp_path):
    model = TinyClassifier()
    model.classes = ["cat", "dog"]
    train, val = loaders("single_label")
    trainer = make_trainer(tmp_path, [PlotCallback()], loggers=False)
    with pytest.raises(ValueError, match="Expected 3 class names .* pl_module.classes has 2"):
        trainer.validate(model, val)
    # In a fit, at the sanity check: before any training.
    trainer = make_trainer(tmp_path, [PlotCallback()], loggers=False, num_sanity_val_steps=1)
    with pytest.raises(ValueError, match="Expected 3 class names"):
        trainer.fit(model, train, val)
    assert trainer.global_step == 0


class StepLossClassifier(TinyClassifier):
    """Logs the training loss per step and per epoch, as TResNetClassifier does."""

    def training_step(self, batch, batch_idx):
        images, targets = batch
        loss = self.loss(self(images), targets)
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        return loss


@pytest.mark.parametrize("epochs", [1, 3])
def test_curves_show_step_level_loss_and_lr_and_the_monitored_metric(tmp_path, epochs):
    train, val = loaders("single_label", num_images=32, batch_size=4)  # 8 steps per epoch
    callback = PlotCallback()
    logger = CSVLogger(tmp_path)
    callbacks = [callback, LearningRateMonitor("step"), ModelCheckpoint(monitor="val/top1", mode="max")]
    trainer = make_trainer(tmp_path, callbacks, loggers=[logger], max_epochs=epochs,
                           log_every_n_steps=2, enable_checkpointing=True)
    trainer.fit(StepLossClassifier(), train, val)
    assert_valid_pngs(Path(trainer.log_dir) / "plots", SINGLE_LABEL_PNGS)

    rows = csv_metrics(logger)
    fig = callback.plot_curves(trainer)
    loss_ax, lr_ax, twin = fig.axes
    lines = {line.get_label(): line for ax in fig.axes for line in ax.lines}
    # Every value the CSV logger wrote per step, at its step: 4 per epoch.
    for key, ax in (("train/loss_step", loss_ax), ("lr-SGD", lr_ax)):
        logged = [(int(row["step"]), float(row[key])) for row in rows if row.get(key)]
        assert len(logged) == 4 * epochs and lines[key] in ax.lines
        assert lines[key].get_xdata().tolist() == [step for step, _ in logged]
        assert lines[key].get_ydata().tolist() == pytest.approx([value for _, value in logged])
    # The monitored metric, once per epoch on the second axis, each value a visible marker.
    monitor = lines["val/top1"]
    assert monitor in twin.lines and loss_ax.get_title() == "Loss and val/top1"
    assert monitor.get_ydata().tolist() == pytest.approx([e["val/top1"] for e in callback.history])
    assert monitor.get_marker() not in ("None", "", None) and monitor.get_markersize() >= 5
    assert len(monitor.get_xdata()) == epochs


# -- throughput ---------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throughput_meter_averages_recent_batches_and_skips_pauses():
    clock = FakeClock()
    meter = ThroughputMeter(window=2, clock=clock)
    assert meter.rate is None
    meter.batch_started()
    clock.now = 1.0
    meter.batch_ended(10)  # 10 images in 1 s
    clock.now = 1.5
    meter.batch_started()  # not paused: the time since the last batch end counts (loading)
    clock.now = 3.0
    meter.batch_ended(10)  # 10 images in 2 s
    assert meter.rate == pytest.approx(20 / 3)
    meter.pause()  # e.g. validation
    clock.now = 100.0
    meter.batch_started()
    clock.now = 101.0
    meter.batch_ended(40)  # window 2: the first batch drops out
    assert meter.rate == pytest.approx(50 / 3)


def test_count_images_finds_the_image_tensor():
    images = torch.zeros(6, 3, 4, 4)
    assert count_images((images, torch.zeros(6))) == 6
    assert count_images({"lam": torch.tensor(0.3), "images": images}) == 6
    assert count_images([torch.zeros(5, 2)]) == 5  # no 4-D tensor: Lightning's rule


def test_progress_bar_shows_images_per_second(tmp_path):
    train, _ = loaders("single_label", num_images=32, batch_size=8)
    bar = ThroughputProgressBar()
    trainer = make_trainer(tmp_path, [bar], loggers=False, max_epochs=1, enable_progress_bar=True,
                           limit_val_batches=0)
    trainer.fit(TinyClassifier(), train)
    rate = float(bar.get_metrics(trainer, trainer.lightning_module)["img/s"])
    assert rate > 0
    # 4 batches, the first timed from its own start: 32 images over the measured time.
    seconds = sum(duration for _, duration in bar.throughput._batches)
    assert rate == pytest.approx(32 / seconds, rel=0.01)
