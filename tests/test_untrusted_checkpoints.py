"""A checkpoint is data from wherever its user got it. What it holds may restore the network and how
it was trained, but never make ``tresnet-ft`` fetch, read or import anything the user did not name;
and any value in it that does not fit is one ``error:`` line (exit code 2), never a traceback.

Weights-file bounds (decompression bombs) and the download cache are in ``tests/test_weights.py``.
"""

from __future__ import annotations

import inspect
import json
import resource
from pathlib import Path

import lightning
import pytest
import torch
from lightning.pytorch import Callback

from tests.classifier_builders import distinct_images, write_image
from tests.data_builders import serve_files
from tests.run_helpers import callback_arg, error_line
from tresnet_ft import TResNetClassifier
from tresnet_ft.classifier.checkpoint import RESTORABLE_HYPERPARAMETERS, load_classifier, trusted_hyperparameters
from tresnet_ft.cli.command import main

# The quickstart data's classes, so that validate accepts the checkpoints built here.
CLASSES = ["circle", "square", "triangle", "cross", "diamond"]
TINY = ["--data.image_size", "32", "--data.batch_size", "4", "--data.dataset_options", '{"num_images": 8}',
        "--trainer.max_epochs", "1", "--model.plots", "false", "--logger", "csv"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Runs, downloads and the hub cache inside ``tmp_path``, offline."""
    from tresnet_ft.training import loggers

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loggers, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr("tresnet_ft.models.weights.WEIGHTS_CACHE", tmp_path / "weights-cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub-cache"))


@pytest.fixture
def weights_reads(monkeypatch) -> list[str]:
    """Every file path read as pretrained weights (``tresnet_ft.models.factory``'s reads)."""
    from tresnet_ft.models import factory

    reads: list[str] = []
    original = factory.read_checkpoint

    def recording(path):
        reads.append(str(path))
        return original(path)

    monkeypatch.setattr(factory, "read_checkpoint", recording)
    return reads


def _training_checkpoint(path: Path, **hparams) -> Path:
    """What ``tresnet-ft fit`` writes for the quickstart data, with ``hparams`` changed in its
    hyperparameters (as a crafted file would have them)."""
    model = TResNetClassifier(num_classes=len(CLASSES), classes=CLASSES, preprocessing={"image_size": 32})
    torch.save({"pytorch-lightning_version": lightning.__version__, "epoch": 0, "global_step": 1,
                "state_dict": model.state_dict(), "hyper_parameters": {**dict(model.hparams), **hparams},
                "tresnet_ft": model.classifier_info().to_dict()}, path)
    return path


class RecordModelSettings(Callback):
    """Writes the model's hyperparameters, as the run built it, to ``folder/hparams.json``."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_validation_start(self, trainer, pl_module) -> None:
        hparams = {key: value for key, value in pl_module.hparams.items() if key != "preprocessing"}
        (Path(self.folder) / "hparams.json").write_text(json.dumps(hparams, default=str))


# --- 1. what --ckpt_path's hyperparameters may restore ------------------------------------------


@pytest.mark.parametrize("where", ["url", "local file"])
def test_validate_never_fetches_or_reads_the_weights_a_checkpoint_names(tmp_path, weights_reads, where):
    garbage = b"not weights" * 100  # read as weights, it would stop the run with an error
    (tmp_path / "w.pth").write_bytes(garbage)
    with serve_files({"w.pth": garbage}) as server:
        named = server.url("w.pth") if where == "url" else str(tmp_path / "w.pth")
        checkpoint = _training_checkpoint(tmp_path / "crafted.ckpt", pretrained=named)
        assert main(["validate", *TINY, "--model.pretrained", "null", "--ckpt_path", str(checkpoint)]) == 0
        assert server.requests == []
    assert weights_reads == []
    assert not (tmp_path / "weights-cache").exists()


@pytest.mark.parametrize("where", ["url", "local file"])
def test_load_from_checkpoint_in_python_never_fetches_or_reads_what_the_checkpoint_names(tmp_path, weights_reads,
                                                                                        where):
    garbage = b"not weights" * 100
    (tmp_path / "w.pth").write_bytes(garbage)
    with serve_files({"w.pth": garbage}) as server:
        named = server.url("w.pth") if where == "url" else str(tmp_path / "w.pth")
        checkpoint = _training_checkpoint(tmp_path / "crafted.ckpt", pretrained=named, arch="tresnet_m.miil_in1k")
        model = TResNetClassifier.load_from_checkpoint(checkpoint)
        assert server.requests == []
    assert weights_reads == [] and model.hparams.pretrained is None and model.hparams.arch == "tresnet_m"
    assert model.classes == CLASSES  # what the checkpoint may restore, it still does


def test_the_users_flags_win_and_only_plain_settings_are_restored(tmp_path, weights_reads):
    checkpoint = _training_checkpoint(
        tmp_path / "crafted.ckpt",
        arch="tresnet_m.miil_in1k",  # a published tag: restoring it would download its weights
        lr=0.5, weight_decay=0.02,
        head_args={"drop_rate": {"class_path": "os.getcwd"}},  # a class for jsonargparse to import
        loss="../../etc/passwd",  # not a plain name
        _class_path="os.system", _instantiator="os.system")
    record = callback_arg(RecordModelSettings, folder=str(tmp_path))
    assert main(["validate", *TINY, "--model.lr", "0.1", record, "--ckpt_path", str(checkpoint)]) == 0
    hparams = json.loads((tmp_path / "hparams.json").read_text())
    assert hparams["lr"] == 0.1  # the flag, not the checkpoint's 0.5
    assert hparams["weight_decay"] == 0.02  # restored: a plain number
    assert hparams["arch"] == "tresnet_m" and hparams["pretrained"] is None  # the tag is dropped
    assert hparams["head_args"] is None and hparams["loss"] == "auto"
    assert weights_reads == []


def test_trusted_hyperparameters_keep_plain_settings_only():
    saved = {"arch": "tresnet_l.miil_in1k", "pretrained": "http://127.0.0.1:9/w.pth", "lr": 0.01,
             "head": "ml_decoder", "head_args": {"embed_dim": 32, "num_heads": 4}, "classes": ["a", "b"],
             "preprocessing": {"image_size": 64}, "ema_decay": None, "plots": False,
             "_class_path": "os.system", "_instantiator": "builtins.exec", "norm": "bn"}
    kept, left_out = trusted_hyperparameters(saved)
    assert kept == {"arch": "tresnet_l", "lr": 0.01, "head": "ml_decoder", "head_args": {"embed_dim": 32, "num_heads": 4},
                    "classes": ["a", "b"], "preprocessing": {"image_size": 64}, "ema_decay": None, "plots": False,
                    "norm": "bn"}
    assert left_out == ["_class_path", "_instantiator", "pretrained"]
    crafted = {"arch": "http://127.0.0.1:9/w.pth", "head": "/etc/passwd", "loss": "os.system", "lr": "0.1",
               "plots": "yes", "classes": "/etc/passwd", "head_args": "/etc/passwd", "norm": "bn:x",
               "freeze_epochs": 1.5, "momentum": float("nan"), "preprocessing": {"image_size": "/etc/passwd"},
               "drop_rate": True, "unknown": 1}
    kept, left_out = trusted_hyperparameters(crafted)
    assert kept == {} and left_out == sorted(crafted)
    assert trusted_hyperparameters(["not", "a", "dict"]) == ({}, [])


def test_every_restorable_setting_is_an_argument_of_the_module():
    arguments = set(inspect.signature(TResNetClassifier.__init__).parameters)
    assert set(RESTORABLE_HYPERPARAMETERS) <= arguments
    assert "pretrained" in arguments and "pretrained" not in RESTORABLE_HYPERPARAMETERS


def test_crafted_metadata_in_a_training_checkpoint_is_one_line(tmp_path, caplog):
    checkpoint = _training_checkpoint(tmp_path / "crafted.ckpt")
    saved = torch.load(checkpoint, weights_only=True)
    saved["tresnet_ft"]["thresholds"] = {"per_class": "everything"}
    torch.save(saved, checkpoint)
    message = error_line(caplog, ["validate", *TINY, "--ckpt_path", str(checkpoint)])
    assert message.startswith(f"error: Cannot use {checkpoint}: Unexpected tresnet-ft checkpoint metadata: "
                              "expected thresholds to be None or"), message


# --- 4. crafted metadata through predict and export ---------------------------------------------


def _metadata(changes: dict | None = None) -> dict:
    """A valid 2-class entry, with ``changes`` (those to ``preprocessing`` merged into its settings)."""
    meta = {"format_version": 2, "arch": "tresnet_m", "classes": ["a", "b"], "task": "single_label",
            "preprocessing": {"image_size": 64}, "head": "linear", "head_args": {}, "norm": "inplace_abn",
            "thresholds": None}
    for key, value in (changes or {}).items():
        meta[key] = {**meta[key], **value} if key == "preprocessing" and isinstance(value, dict) else value
    return meta


# Each: (what the crafted entry changes, what the error line says). The weights are a tiny stand-in:
# every entry is refused before a network is built from it.
CRAFTED_METADATA = {
    "absurd image size": ({"preprocessing": {"image_size": 2**20}}, "Expected image_size to be at most 4096"),
    "format version of another type": ({"format_version": "2"}, "expected format_version to be an integer"),
    "newer format version": ({"format_version": 3}, "written by a newer tresnet-ft (format 3"),
    "mean that is not a list": ({"preprocessing": {"mean": "123"}}, "Expected mean to be three numbers"),
    "eval_crop_fraction of another type": ({"preprocessing": {"eval_crop_fraction": "all"}},
                                           "Expected eval_crop_fraction in (0, 1]"),
    "preprocessing that is not a dict": ({"preprocessing": [64]}, "expected preprocessing to be a dict"),
    "arch of another type": ({"arch": 7}, "expected arch to be one of ['tresnet_l', 'tresnet_m'"),
    "arch with a tag to download": ({"arch": "tresnet_m.miil_in1k"}, "expected arch to be one of"),
    "classes as a string": ({"classes": "ab"}, "expected classes to be a non-empty list of class names"),
    "unknown task": ({"task": ["multi_label"]}, "expected task to be one of ['multi_label', 'single_label']"),
    "unknown head": ({"head": "os.system"}, "expected head to be one of ['linear', 'ml_decoder']"),
    "head_args of another type": ({"head_args": {"drop_rate": "high"}}, "expected head_args of the linear head"),
    "head_args the head does not take": ({"head_args": {"class_path": 1}}, "expected head_args of the linear head"),
    "thresholds of another shape": ({"thresholds": {"global_threshold": 0.5, "per_class": [0.5],
                                                    "default_threshold": 0.5, "f1_before": 0.0, "f1_global": 0.0,
                                                    "f1_after": 0.0}}, "a per_class threshold for each of the 2"),
    "key of another type": ({1: "x"}, "unknown keys ['1']"),
}


@pytest.fixture
def photo(tmp_path) -> Path:
    return write_image(tmp_path / "photo.png", distinct_images(1)[0])


def _commands(checkpoint: Path, photo: Path) -> dict[str, list[str]]:
    return {"predict": ["predict", str(checkpoint), str(photo), "-o", "p.csv"],
            "export": ["export", str(checkpoint), "--format", "onnx", "-o", "m.onnx"]}


@pytest.mark.parametrize("command", ["predict", "export"])
@pytest.mark.parametrize("case", list(CRAFTED_METADATA))
def test_crafted_metadata_is_one_line_in_predict_and_export(tmp_path, caplog, photo, weights_reads, command, case):
    changes, expected = CRAFTED_METADATA[case]
    checkpoint = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {"model.head.fc.bias": torch.zeros(2)}, "tresnet_ft": _metadata(changes)}, checkpoint)
    message = error_line(caplog, _commands(checkpoint, photo)[command])
    assert message.startswith(f"error: Cannot use {checkpoint}: ") and expected in message, message
    assert weights_reads == [] and not list(tmp_path.glob("p.csv*")) and not list(tmp_path.glob("m.onnx*"))


@pytest.fixture(scope="module")
def network_state() -> dict[str, torch.Tensor]:
    """A 2-class tresnet_m's weights under the checkpoint prefix."""
    from tresnet_ft import create_model

    return {f"model.{key}": value for key, value in create_model("tresnet_m", 2).state_dict().items()}


@pytest.mark.parametrize("command", ["predict", "export"])
def test_weights_that_do_not_fit_the_metadata_are_one_line(tmp_path, caplog, photo, network_state, command):
    checkpoint = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": network_state, "tresnet_ft": _metadata({"classes": ["a", "b", "c"]})}, checkpoint)
    message = error_line(caplog, _commands(checkpoint, photo)[command])
    assert message.startswith(f"error: Cannot use {checkpoint}: its weights do not fit the tresnet_m with a "
                              "linear head for 3 classes"), message
    assert "other shapes: head.fc.bias (2,) instead of (3,), head.fc.weight (2, 2048) instead of (3, 2048)" in message


def test_a_class_count_the_weights_do_not_have_allocates_nothing_for_it(tmp_path, network_state):
    # A million classes would make an 8 GB head; the head is sized on the meta device first.
    checkpoint = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": network_state, "tresnet_ft": _metadata({"classes": ["a"] * 1_000_000})}, checkpoint)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB, the highest so far
    with pytest.raises(ValueError, match=r"do not fit the tresnet_m with a linear head for 1000000 classes"):
        load_classifier(checkpoint)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_kib < 2 << 20  # under 2 GiB more


def test_a_state_dict_that_is_not_tensors_is_one_line(tmp_path, caplog, photo):
    checkpoint = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {"model.head.fc.bias": [0.0, 0.0]}, "tresnet_ft": _metadata()}, checkpoint)
    message = error_line(caplog, _commands(checkpoint, photo)["predict"])
    assert message.startswith(f"error: Cannot use {checkpoint}: expected its state_dict to be a dict of tensors")
