"""Bad input through the ``tresnet-ft`` command: one ``error:`` line saying what, where and how to
fix it, exit code 2, no traceback. Each case runs ``main`` in this process (an exception escaping
it would fail the test); ``tests/test_cli.py`` checks a few in a subprocess, stderr included."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from tests.data_builders import write_jpeg
from tests.run_helpers import error_line
from tresnet_ft.cli.command import main

TINY = [
    "--data.image_size",
    "32",
    "--data.batch_size",
    "4",
    "--data.dataset_options",
    '{"num_images": 8}',
    "--trainer.max_epochs",
    "1",
    "--model.plots",
    "false",
    "--logger",
    "csv",
]


@pytest.fixture(autouse=True)
def runs_in_tmp(tmp_path, monkeypatch):
    from tresnet_ft.training import loggers

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loggers, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_a_value_of_the_wrong_type_names_the_key_and_the_value(caplog):
    message = error_line(caplog, ["fit", "--model.lr", "fast"])
    assert (
        '"model.lr"' in message
        and "Expected a <class 'float'>. Got value: fast" in message
    )
    assert "tresnet-ft fit --help" in message


def test_an_image_size_not_divisible_by_4_fails_before_training(caplog):
    message = error_line(caplog, ["fit", *TINY, "--data.image_size", "102"])
    assert "image_size to be a multiple of 4 of at least 32" in message and "got 102" in message
    assert "--data.image_size 100 or 104" in message
    assert not any(
        "Restoring" in r.getMessage() or "Epoch" in r.getMessage()
        for r in caplog.records
    )


def _own_checkpoint(path: Path, classes: list[str], task: str = "single_label") -> Path:
    """What `tresnet-ft fit` writes for a run on ``classes`` (the entries validate reads)."""
    import lightning

    from tresnet_ft import TResNetClassifier

    model = TResNetClassifier(
        num_classes=len(classes), classes=classes, task=task, preprocessing={"image_size": 32}
    )
    meta = model.classifier_info().to_dict()
    torch.save(
        {
            "pytorch-lightning_version": lightning.__version__,
            "epoch": 0,
            "global_step": 1,
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "tresnet_ft": meta,
        },
        path,
    )
    return path


def test_a_checkpoint_for_another_class_list_is_refused_before_loading(
    tmp_path, caplog
):
    checkpoint = _own_checkpoint(tmp_path / "three.ckpt", ["ant", "bee", "cat"])
    message = error_line(caplog, ["validate", *TINY, "--ckpt_path", str(checkpoint)])
    assert (
        f"The checkpoint {checkpoint} does not fit this run (num_classes, classes differ)"
        in message
    )
    assert (
        "3 classes ['ant', 'bee', 'cat']" in message
        and "5 classes ['circle'," in message
    )
    assert "--model.pretrained CKPT" in message


def test_a_checkpoint_for_another_task_is_refused(tmp_path, caplog):
    checkpoint = _own_checkpoint(
        tmp_path / "tags.ckpt",
        ["circle", "square", "triangle", "cross", "diamond"],
        task="multi_label",
    )
    message = error_line(caplog, ["validate", *TINY, "--ckpt_path", str(checkpoint)])
    assert (
        "(task differ)" in message
        and "it holds multi_label" in message
        and "this run has single_label" in message
    )


def test_a_shared_classifier_file_is_not_a_training_checkpoint(tmp_path, caplog):
    from tresnet_ft import create_model
    from tresnet_ft.classifier.checkpoint import ClassifierInfo, write_classifier
    from tresnet_ft.data import EvalPreprocessing

    info = ClassifierInfo(
        arch="tresnet_m", classes=["a", "b"], task="single_label", preprocessing=EvalPreprocessing(32)
    )
    shared = write_classifier(
        tmp_path / "shared.ckpt", create_model("tresnet_m", 2), info
    )
    message = error_line(caplog, ["fit", *TINY, "--ckpt_path", str(shared)])
    assert (
        f"{shared} is not a training checkpoint" in message
        and f"--model.pretrained {shared}" in message
    )


def test_an_empty_folder_names_the_folder_and_the_layout(tmp_path, caplog):
    (tmp_path / "photos").mkdir()
    message = error_line(
        caplog,
        [
            "fit",
            "--recipe",
            "folder",
            "--data.root",
            "photos",
            "--model.pretrained",
            "null",
        ],
    )
    assert (
        "Expected class sub-folders in photos (e.g. photos/cat/001.jpg), but found none"
        in message
    )


def test_a_csv_without_a_labels_column_names_the_columns_it_has(tmp_path, caplog):
    write_jpeg(tmp_path / "data" / "0.jpg", 16, 16)
    (tmp_path / "data" / "tags.csv").write_text("image,tags\n0.jpg,cat\n")
    message = error_line(
        caplog,
        [
            "fit",
            "--recipe",
            "multilabel",
            "--data.root",
            "data/tags.csv",
            "--model.pretrained",
            "null",
        ],
    )
    assert (
        "Expected a 'labels' column in data/tags.csv, but got columns ['image', 'tags']"
        in message
    )
    assert "Fix: name the columns 'image'" in message


def test_a_class_seen_only_in_validation_is_named(tmp_path, caplog):
    for split, name in (
        ("train", "cat"),
        ("train", "dog"),
        ("val", "cat"),
        ("val", "zebra"),
    ):
        write_jpeg(tmp_path / "pets" / split / name / "0.jpg", 16, 16)
    message = error_line(
        caplog,
        [
            "fit",
            "--recipe",
            "folder",
            "--data.root",
            "pets",
            "--model.pretrained",
            "null",
        ],
    )
    assert (
        "Classes ['zebra'] have images in pets/val but no folder in pets/train"
        in message
    )
    assert "Fix: add training images under pets/train/<class>/" in message


def test_no_network_for_pretrained_weights(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    message = error_line(caplog, ["fit", *TINY, "--model.pretrained", "true"])
    assert (
        "Could not fetch pretrained weights 'tresnet_m.miil_in21k_ft_in1k'" in message
    )
    assert (
        str(tmp_path / "hub") in message
        and "--model.pretrained /path/to/model.safetensors" in message
    )


def test_no_network_for_a_dataset_download(tmp_path, caplog, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    message = error_line(
        caplog,
        [
            "fit",
            *TINY,
            "--data.dataset",
            "cifar10",
            "--data.root",
            "cifar",
            "--data.dataset_options",
            "{}",
        ],
    )
    assert (
        "Dataset 'cifar10' not found in cifar: missing cifar-10-batches-py/" in message
    )
    assert (
        "Downloading failed ([Errno 101] Network is unreachable); this machine may be offline"
        in message
    )
    assert "cifar-10-python.tar.gz" in message and "MD5" in message


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_at_that_step_and_names_the_causes(caplog):
    # A learning rate of 1e30 sends the weights to infinity after the first step.
    message = error_line(
        caplog,
        [
            "fit",
            *TINY,
            "--model.lr",
            "1e30",
            "--model.ema_decay",
            "null",
            "--trainer.max_epochs",
            "3",
        ],
    )
    assert "The training loss became nan at step 1 (epoch 0)" in message
    assert (
        "learning rate too high" in message
        and "fp16" in message
        and "--trainer.precision bf16-mixed" in message
    )
    # Stopped there: 3 epochs of 2 steps were asked for, and no checkpoint of broken weights was written.
    assert not list(Path("runs").rglob("*.ckpt"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_trainer_setting_lightning_refuses_is_one_line(caplog):
    message = error_line(caplog, ["fit", *TINY, "--trainer.accelerator", "gpu"])
    assert "GPU" in message or "gpu" in message


@pytest.mark.slow
def test_turning_the_progress_bar_off_works_with_the_default_throughput_bar(caplog):
    caplog.clear()
    assert (
        main(
            [
                "fit",
                *TINY,
                "--trainer.enable_progress_bar",
                "false",
                "--trainer.fast_dev_run",
                "true",
            ]
        )
        == 0
    )
