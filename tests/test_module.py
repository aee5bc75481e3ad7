"""The LightningModule in real (tiny) training runs: checkpoints, EMA, freezing, resume, tasks."""
import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from tresnet_ft import ImageDataModule, TResNetClassifier, create_model
from tresnet_ft.classifier.checkpoint import load_classifier
from tresnet_ft.classifier.thresholds import tune_thresholds
from tresnet_ft.training.evaluation import EvaluationAccumulator


def tiny_data(multi_label=False, num_images=16):
    return ImageDataModule(dataset="quickstart_multilabel" if multi_label else "quickstart", image_size=32,
                           batch_size=8, num_workers=0, dataset_options={"num_images": num_images},
                           randaugment_ops=0, cutout=0.0)


def tiny_trainer(tmp_path, **kwargs):
    defaults = dict(default_root_dir=tmp_path, accelerator="cpu", devices=1, max_epochs=1,
                    logger=CSVLogger(tmp_path, name="logs"), enable_progress_bar=False,
                    enable_model_summary=False, deterministic=True)
    return pl.Trainer(**{**defaults, **kwargs})


class Recorder(Callback):
    """Learning rate after every optimizer step, and the stem conv weight after every epoch."""

    def __init__(self):
        self.lrs, self.stem = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])

    def on_train_epoch_end(self, trainer, pl_module):
        self.stem.append(pl_module.model.body.conv1.conv.weight.detach().clone())


def _fit(tmp_path, data=None, callbacks=(), trainer_kwargs=None, **model_kwargs):
    pl.seed_everything(0)
    data = data or tiny_data()
    model = TResNetClassifier.from_datamodule(data, arch="tresnet_m", **{"pretrained": None, **model_kwargs})
    trainer = tiny_trainer(tmp_path, callbacks=list(callbacks), **(trainer_kwargs or {}))
    trainer.fit(model, data)
    return trainer, model, data


def test_fit_writes_a_self_contained_checkpoint(tmp_path):
    trainer, model, data = _fit(tmp_path)
    best = trainer.checkpoint_callback.best_model_path
    assert best.endswith("best.ckpt") and (tmp_path / "logs" / "version_0" / "checkpoints" / "last.ckpt").exists()
    loaded = load_classifier(best)
    assert loaded.info.classes == ["circle", "square", "triangle", "cross", "diamond"]
    assert loaded.info.task == "single_label" and loaded.info.image_size == 32
    assert "val/top1" in trainer.callback_metrics and "train/loss_epoch" in trainer.callback_metrics
    # The preprocessing is one plain entry in the hyperparameters and one in the metadata.
    hparams = torch.load(best, weights_only=True)["hyper_parameters"]
    assert hparams["preprocessing"] == data.preprocessing.to_dict() and "image_size" not in hparams
    assert loaded.info.preprocessing == data.preprocessing == model.preprocessing
    assert TResNetClassifier.load_from_checkpoint(best).preprocessing == data.preprocessing


def test_ema_weights_are_what_is_validated_and_saved(tmp_path):
    trainer, model, data = _fit(tmp_path, ema_decay=0.5, lr=5e-3)
    logged_loss = float(trainer.callback_metrics["val/loss"])
    ema = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)["state_dict"]
    last = torch.load(tmp_path / "logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    current = last["current_model_state"]  # best.ckpt keeps the averaged weights only
    assert all(torch.equal(value, last["state_dict"][key]) for key, value in ema.items())  # one epoch: the same
    assert not torch.equal(ema["model.head.fc.weight"], current["model.head.fc.weight"])
    fresh = TResNetClassifier.from_datamodule(data, arch="tresnet_m", pretrained=None)
    fresh.load_state_dict(ema)
    result = tiny_trainer(tmp_path / "check", logger=False).validate(fresh, data)[0]
    assert result["val/loss"] == pytest.approx(logged_loss, abs=1e-5)


def _pretrained_file(tmp_path):
    """A random TResNet-M saved as a weights file: freezing applies only to a pretrained backbone."""
    torch.manual_seed(1)
    path = tmp_path / "pretrained.pth"
    torch.save(create_model("tresnet_m", 5).state_dict(), path)
    return path


def test_freezing_keeps_the_backbone_then_trains_it_without_changing_the_schedule(tmp_path):
    frozen, plain = Recorder(), Recorder()
    weights = _pretrained_file(tmp_path)
    _, model, _ = _fit(tmp_path / "frozen", callbacks=[frozen], trainer_kwargs={"max_epochs": 2}, freeze_epochs=1,
                       pretrained=str(weights))
    _fit(tmp_path / "plain", callbacks=[plain], trainer_kwargs={"max_epochs": 2})
    torch.testing.assert_close(frozen.stem[0], torch.load(weights)["body.conv1.conv.weight"])
    assert not torch.equal(frozen.stem[1], frozen.stem[0])
    assert frozen.lrs == plain.lrs and len(frozen.lrs) == 4
    assert all(p.requires_grad for p in model.parameters())  # unfrozen when the run ends


def test_freezing_is_skipped_without_pretrained_weights(tmp_path, caplog):
    pl.seed_everything(0)
    initial = TResNetClassifier.from_datamodule(tiny_data(), arch="tresnet_m", pretrained=None)
    recorder = Recorder()
    with caplog.at_level("INFO", logger="tresnet_ft"):
        _fit(tmp_path, callbacks=[recorder], freeze_epochs=1)  # the same seed: the same initial weights
    assert "freeze_epochs=1 ignored: the backbone is not pretrained" in caplog.text
    assert not torch.equal(recorder.stem[0], initial.model.body.conv1.conv.weight)  # trained in epoch 0


def test_resume_from_last_continues_the_schedule(tmp_path):
    straight = Recorder()
    full, _, _ = _fit(tmp_path / "straight", callbacks=[straight], trainer_kwargs={"max_epochs": 2})
    _, _, data = _fit(tmp_path / "resumed", trainer_kwargs={"max_epochs": 1})
    last = tmp_path / "resumed" / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    resumed_rec = Recorder()
    model = TResNetClassifier.from_datamodule(data, arch="tresnet_m", pretrained=None)
    resumed = tiny_trainer(tmp_path / "resumed", max_epochs=2, callbacks=[resumed_rec])
    resumed.fit(model, data, ckpt_path=last)
    assert resumed.global_step == full.global_step == 4 and resumed.current_epoch == full.current_epoch
    assert resumed_rec.lrs == straight.lrs[2:]


def test_multilabel_tunes_thresholds_and_stores_them(tmp_path):
    trainer, model, _ = _fit(tmp_path, data=tiny_data(multi_label=True), head="ml_decoder",
                             head_args={"embed_dim": 32, "num_heads": 4, "ffn_dim": 64})
    assert model.loss_name == "asl" and "val/mAP" in trainer.callback_metrics
    assert "val/f1_tuned" in trainer.callback_metrics
    info = load_classifier(trainer.checkpoint_callback.best_model_path).info
    assert info.task == "multi_label" and info.head == "ml_decoder"
    assert info.thresholds is not None and len(info.thresholds["per_class"]) == 5
    # The logged mAP and the thresholds come from the one evaluation the plots read too.
    result = model.evaluation("val")
    assert result.num_samples == len(trainer.datamodule.val_dataloader().dataset)
    assert float(trainer.callback_metrics["val/mAP"]) == pytest.approx(result.metrics["mAP"])
    torch.testing.assert_close(model.thresholds.per_class, tune_thresholds(result.scores, result.targets).per_class)
    assert float(trainer.callback_metrics["val/f1_tuned"]) == pytest.approx(model.thresholds.f1_after)


def test_each_validation_is_computed_once_and_kept_for_the_plots(tmp_path, monkeypatch):
    computed = []
    original = EvaluationAccumulator.compute

    def compute(self, *args, **kwargs):
        computed.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(EvaluationAccumulator, "compute", compute)
    trainer, model, data = _fit(tmp_path, trainer_kwargs={"max_epochs": 2, "num_sanity_val_steps": 1})
    assert len(computed) == 3 and len(set(map(id, computed))) == 1  # sanity check, 2 epochs: one accumulator
    result = model.evaluation("val")
    assert float(trainer.callback_metrics["val/top1"]) == pytest.approx(result.metrics["top1"])
    assert result.confusion_matrix.sum() == result.num_samples == len(data.val_dataloader().dataset)
    assert model.evaluation("test") is None
    tiny_trainer(tmp_path / "test", logger=False).test(model, data)
    assert model.evaluation("test").num_samples == result.num_samples and len(computed) == 4


def test_mismatched_task_is_a_clear_error(tmp_path):
    data = tiny_data(multi_label=True)
    model = TResNetClassifier(arch="tresnet_m", num_classes=5, task="single_label")
    with pytest.raises(ValueError, match="from_datamodule"):
        tiny_trainer(tmp_path).fit(model, data)


def test_data_that_prepares_images_otherwise_is_a_clear_error(tmp_path):
    data = tiny_data()  # 32 px, squish
    model = TResNetClassifier.from_datamodule(data, arch="tresnet_m", pretrained=None,
                                              preprocessing={"image_size": 64, "eval_crop": "center_crop"})
    with pytest.raises(ValueError, match=r"The data prepares evaluation images as EvalPreprocessing\(image_size=32,"
                                         r".* but the model was built for EvalPreprocessing\(image_size=64, "
                                         r"eval_crop='center_crop'.*preprocessing=dm.preprocessing"):
        tiny_trainer(tmp_path).fit(model, data)


def test_plots_get_images_back_in_unit_range_whatever_the_normalisation():
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    model = TResNetClassifier(preprocessing={"image_size": 32, "mean": mean, "std": std})
    assert model.hparams.preprocessing == {"image_size": 32, "eval_crop": "squish", "eval_crop_fraction": 0.875,
                                           "mean": list(mean), "std": list(std)}
    torch.testing.assert_close(model._unnormalise(model.preprocessing.to_float(pixels)), pixels.float() / 255)


class _NeverImproves(TResNetClassifier):
    """Validation always reports the same top-1, so the best checkpoint is never replaced."""

    def _log_evaluation(self, stage, result) -> None:
        self.log("val/top1", 0.5)


@pytest.mark.slow
def test_last_checkpoint_is_written_every_epoch_even_without_improvement(tmp_path):
    pl.seed_everything(0)
    data = tiny_data()
    model = _NeverImproves.from_datamodule(data, arch="tresnet_m", pretrained=None, plots=False,
                                           checkpoint_every_n_steps=3)
    saved_steps = []

    class RecordSaves(Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            saved_steps.append(trainer.global_step)

    trainer = tiny_trainer(tmp_path, max_epochs=2, callbacks=[RecordSaves()])
    trainer.fit(model, data)
    folder = tmp_path / "logs" / "version_0" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "last.ckpt"]
    best, last = (torch.load(folder / name, weights_only=True) for name in ("best.ckpt", "last.ckpt"))
    assert best["global_step"] == 2  # the first epoch's, never beaten
    assert last["global_step"] == trainer.global_step == 4 and last["epoch"] == 1
    # last at every epoch end (2, 4) and every 3 steps (3); best.ckpt holds weights only, and
    # Lightning does not call callbacks' on_save_checkpoint for such files
    assert saved_steps == [2, 3, 4]
