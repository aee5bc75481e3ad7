"""The DataModule: metadata before the model, loaders, device-side conversion and mixing."""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from tests.data_builders import write_jpeg
from tresnet_ft.data import EvalPreprocessing, ImageDataModule


def test_task_classes_and_count_are_known_before_setup(tmp_path):
    cifar = ImageDataModule("cifar100", root=str(tmp_path), num_workers=0)
    assert cifar.num_classes == 100 and cifar.task == "single_label" and cifar.classes[0] == "apple"
    tags = ImageDataModule("quickstart_multilabel", num_workers=0)
    assert tags.task == "multi_label" and tags.num_classes == 5


def test_loaders_yield_uint8_batches_and_the_device_hook_makes_floats():
    dm = ImageDataModule(
        "quickstart", image_size=64, batch_size=8, num_workers=0, dataset_options={"num_images": 20}
    )
    dm.prepare_data()
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert (
        images.shape == (8, 3, 64, 64)
        and images.dtype == torch.uint8
        and labels.dtype == torch.int64
    )
    floats, same = dm.on_after_batch_transfer((images, labels), 0)
    assert floats.dtype == torch.float32 and torch.allclose(floats * 255, images.float())
    assert torch.equal(same, labels)  # no trainer: not training, so never mixed
    assert len(dm.val_dataloader().dataset) == 20  # num_images applies to each split


def test_unknown_dataset_and_unsupported_options_fail_early():
    with pytest.raises(ValueError, match="Expected dataset to be one of"):
        ImageDataModule("imagenet")
    with pytest.raises(ValueError, match="fixed splits"):
        ImageDataModule("flowers102", val_fraction=0.1)
    with pytest.raises(ValueError, match="does not take options"):
        ImageDataModule("quickstart", dataset_options={"colour": "red"})


def test_the_eval_flags_make_one_preprocessing_object_that_the_loaders_use(tmp_path):
    dm = ImageDataModule("quickstart", image_size=64, eval_crop="center_crop", mean=(0.5, 0.5, 0.5),
                         std=(0.25, 0.25, 0.25), batch_size=4, num_workers=0, dataset_options={"num_images": 4})
    assert dm.preprocessing == EvalPreprocessing(image_size=64, eval_crop="center_crop", mean=(0.5, 0.5, 0.5),
                                                 std=(0.25, 0.25, 0.25))
    assert dm.transform_config.preprocessing is dm.preprocessing  # one object, not a copy
    assert ImageDataModule("quickstart").preprocessing == EvalPreprocessing()  # defaults unchanged
    # JPEGs decode no smaller than what each split's resize needs: S to train, S / 0.875 to evaluate
    assert (dm._min_decode_size("train"), dm._min_decode_size("val")) == (64, 73)
    images, _ = next(iter(dm.val_dataloader()))
    floats, _ = dm.on_after_batch_transfer((images, None), 0)
    torch.testing.assert_close(floats, (images.float() / 255 - 0.5) / 0.25)


def test_a_bad_eval_setting_fails_when_the_datamodule_is_made():
    with pytest.raises(ValueError, match=r"multiple of 4 of at least 32 .* Fix: --data.image_size 48 or 52"):
        ImageDataModule("quickstart", image_size=50)
    with pytest.raises(ValueError, match="eval_crop"):
        ImageDataModule("quickstart", eval_crop="letterbox")


def test_mixing_is_refused_for_multi_label():
    dm = ImageDataModule("quickstart_multilabel", mixup_alpha=0.2, num_workers=0)
    with pytest.raises(ValueError, match="only for single-label"):
        _ = dm.mixer


class _Recorder(pl.LightningModule):
    """Tiny model that records what its training and validation steps receive."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(3, num_classes)
        self.seen: dict[str, list] = {"train": [], "val": []}

    def _logits(self, images):
        return self.fc(images.mean(dim=(2, 3)))

    def training_step(self, batch, batch_idx):
        images, targets = batch
        self.seen["train"].append((images.dtype, targets.shape, targets.dtype))
        return nn.functional.cross_entropy(self._logits(images), targets)

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        self.seen["val"].append((images.dtype, targets.shape, targets.dtype))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(dm: ImageDataModule) -> _Recorder:
    model = _Recorder(dm.num_classes)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    return model


def test_fit_mixes_training_batches_only():
    dm = ImageDataModule(
        "quickstart",
        image_size=32,
        batch_size=8,
        num_workers=0,
        cutmix_alpha=1.0,
        mixup_alpha=0.5,
        dataset_options={"num_images": 24},
    )
    model = _fit(dm)
    assert model.seen["train"] == [(torch.float32, torch.Size([8, 5]), torch.float32)] * 2
    assert model.seen["val"] == [(torch.float32, torch.Size([8]), torch.int64)]


def test_unreadable_images_in_workers_are_reported_once_at_teardown(tmp_path, caplog):
    for name in ("cat", "dog"):
        for i in range(4):
            write_jpeg(tmp_path / "train" / name / f"{i}.jpg", 24, 24, seed=i)
            write_jpeg(tmp_path / "val" / name / f"{i}.jpg", 24, 24, seed=10 + i)
    broken = tmp_path / "train" / "dog" / "2.jpg"
    broken.write_bytes(broken.read_bytes()[:120])  # passes the header check, fails to decode
    dm = ImageDataModule(
        "folder",
        root=str(tmp_path),
        image_size=32,
        batch_size=4,
        num_workers=2,
        persistent_workers=False,
    )
    with caplog.at_level(logging.WARNING, logger="tresnet_ft.data"):
        _fit(dm)
    reports = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(reports) == 1
    assert (
        "Skipped 1 unreadable image(s)" in reports[0] and "dog/2.jpg (truncated JPEG" in reports[0]
    )


def test_a_split_left_without_readable_images_is_one_clear_error(tmp_path):
    """Every held-out image unreadable would mean no metric and no best checkpoint: refuse it."""
    for name in ("cat", "dog"):
        for i in range(3):
            write_jpeg(tmp_path / "train" / name / f"{i}.jpg", 24, 24, seed=i)
            (tmp_path / "val" / name).mkdir(parents=True, exist_ok=True)
            (tmp_path / "val" / name / f"{i}.jpg").write_bytes(b"not an image at all")
    dm = ImageDataModule("folder", root=str(tmp_path), image_size=32, batch_size=2, num_workers=0)
    with pytest.raises(ValueError, match=r"folder/val has no readable image under .*nothing to evaluate"):
        dm.setup("fit")


@pytest.mark.parametrize("setting, message", [
    ({"crop_scale": (0.9, 0.1)}, r"crop_scale .* 0 < low <= high <= 1"),
    ({"crop_scale": (0.0, 2.0)}, r"crop_scale"),
    ({"randaugment_ops": -1}, r"randaugment_ops >= 0"),
    ({"cutout_size": 2.0}, r"cutout_size in \(0, 1\]"),
    ({"cutout_size": 0.0}, r"cutout_size in \(0, 1\]"),
    ({"predict_split": "nope"}, r"nope"),
    ({"val_fraction": 1.5}, r"val_fraction in \[0, 1\)"),
    ({"val_fraction": -0.1}, r"val_fraction in \[0, 1\)"),
    ({"mixup_alpha": -1.0}, r"non-negative alphas"),
    ({"mix_prob": 2.0}, r"prob in \[0, 1\]"),
])
def test_a_bad_augmentation_or_split_setting_fails_when_the_datamodule_is_made(setting, message):
    """Checked at construction, before any file is read or any batch is drawn."""
    with pytest.raises(ValueError, match=message):
        ImageDataModule("folder", root="/nonexistent", **setting)
