"""Loading folders in timm's hub layout back: ``load_classifier``, ``create_model``,
``open_runtime`` and ``tresnet-ft predict`` on ``DIR``, ``local-dir:DIR`` and ``hf-hub:ORG/NAME``
(from the Hugging Face cache, offline); and the folders we refuse, each with one line."""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from classifier_builders import (CLASSES, TAGS, multi_label_checkpoint, photo_arrays, preprocess, reference_logits,
                                 reference_model, single_label_checkpoint, write_image, write_photo_folder)
from run_helpers import error_line
from tresnet_ft import create_model, load_classifier
from tresnet_ft.cli.command import main
from tresnet_ft.errors import InvalidValueError, UnavailableError
from tresnet_ft.inference.hub_export import export_hub_folder
from tresnet_ft.inference.runtime import open_runtime

CHECKPOINTS = {"single_label": single_label_checkpoint, "multi_label": multi_label_checkpoint}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub")
    return {kind: export_hub_folder(build(), root / kind).folder for kind, build in CHECKPOINTS.items()}


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> str:
    """One image to predict, so that the errors under test are the model's, not the inputs'."""
    return str(write_image(tmp_path_factory.mktemp("photo") / "a.png", photo_arrays()[0]))


@pytest.mark.parametrize("kind", list(CHECKPOINTS))
def test_load_classifier_gives_back_the_same_classifier(folders, kind):
    checkpoint = CHECKPOINTS[kind]()
    written = reference_model(checkpoint)
    loaded = load_classifier(folders[kind])
    assert loaded.info.to_dict().keys() == written.info.to_dict().keys()
    for key in ("arch", "classes", "task", "preprocessing", "head", "head_args", "norm"):
        assert getattr(loaded.info, key) == getattr(written.info, key), key
    assert torch.equal(loaded.info.decision_thresholds(), written.info.decision_thresholds())
    images = preprocess(written.info, photo_arrays())
    with torch.no_grad():
        logits = loaded.model(images)
    torch.testing.assert_close(logits, reference_logits(checkpoint, photo_arrays()), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", list(CHECKPOINTS))
def test_create_model_loads_the_folder_with_its_head(folders, kind):
    checkpoint = CHECKPOINTS[kind]()
    images = preprocess(reference_model(checkpoint).info, photo_arrays()[:2])
    expected = reference_logits(checkpoint, photo_arrays()[:2])
    for model in (create_model("tresnet_m", pretrained=folders[kind]),
                  create_model(f"local-dir:{folders[kind]}")):  # timm's spelling: the source as the name
        assert model.head_name == reference_model(checkpoint).info.head
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(images), expected, atol=1e-4, rtol=0)


def test_create_model_with_other_classes_keeps_the_body(folders):
    model = create_model("tresnet_m", num_classes=3, pretrained=str(folders["single_label"])).eval()
    reference = reference_model(single_label_checkpoint()).model
    images = preprocess(reference_model(single_label_checkpoint()).info, photo_arrays()[:2])
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(images), reference.forward_features(images),
                                   atol=1e-4, rtol=0)
        assert model(images).shape == (2, 3)
    with pytest.raises(InvalidValueError, match="to hold a tresnet_l, but its config says tresnet_m"):
        create_model("tresnet_l", pretrained=folders["single_label"])


def test_a_plain_timm_folder_loads_as_single_label(folders, tmp_path):
    folder = tmp_path / "plain"
    shutil.copytree(folders["single_label"], folder)
    (folder / "tresnet_ft.json").unlink()  # what timm's save_for_hf writes: no metadata of ours
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"].update(crop_mode="center", crop_pct=0.875)
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_classifier(folder)
    assert (loaded.info.task, loaded.info.classes, loaded.info.thresholds) == ("single_label", CLASSES, None)
    assert (loaded.info.preprocessing.eval_crop, loaded.info.preprocessing.resize_side) == ("center_crop", 73)


def _fill_hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """``folder`` as huggingface_hub's cache keeps a downloaded snapshot: ``snapshots/<commit>`` + ``refs/main``."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit, ignore=shutil.ignore_patterns("README.md"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_hf_hub_ids_load_from_the_cache_offline(folders, photo, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    _fill_hub_cache(tmp_path / "hub", "me/tagger", folders["multi_label"])
    loaded = load_classifier("hf-hub:me/tagger")
    assert loaded.info.classes == TAGS and loaded.info.thresholds is not None
    runtime = open_runtime("hf-hub:me/tagger", device="cpu")
    assert runtime.info.classes == TAGS
    line = error_line(caplog, ["predict", "hf-hub:me/missing", photo, "-o", str(tmp_path / "p.csv")])
    assert "Could not fetch hf-hub:me/missing" in line and "HF_HUB_OFFLINE=1 forbids downloading" in line
    assert "hf download me/missing --local-dir DIR" in line
    with pytest.raises(InvalidValueError, match="Expected a hub id ORG/NAME"):
        load_classifier("hf-hub:../../etc")
    with pytest.raises(UnavailableError):
        create_model("tresnet_m", pretrained="hf-hub:me/missing")


def test_predict_and_runtime_take_the_folder(folders, tmp_path):
    photos = tmp_path / "photos"
    write_photo_folder(photos)
    rows = {}
    for name, source in (("ckpt", multi_label_checkpoint()), ("folder", folders["multi_label"])):
        output = tmp_path / f"{name}.csv"
        assert main(["predict", str(source), str(photos), "-o", str(output)]) == 0
        rows[name] = list(csv.DictReader(output.open()))
    assert rows["folder"] == rows["ckpt"] and len(rows["folder"]) == 7
    images = torch.stack([reference_model(multi_label_checkpoint()).info.eval_transform("uint8")(a)
                          for a in photo_arrays()[:2]])
    torch.testing.assert_close(open_runtime(folders["multi_label"], device="cpu").logits(images),
                               open_runtime(multi_label_checkpoint(), device="cpu").logits(images), atol=1e-5, rtol=0)


def _edited(source: Path, target: Path, edit) -> Path:
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    edit(config)
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.update(architecture="resnet50"), "expected architecture to be one of"),
    (lambda c: c.update(num_classes=10**7), "expected num_classes to be an integer from 1 to 1,000,000"),
    (lambda c: c.update(num_classes=7, label_names=None), "do not fit the (tresnet_m with a )?linear head for 7 classes"),
    (lambda c: c.update(label_names=["a"]), "expected label_names to be a list of 5 names"),
    (lambda c: c.update(model_args={"head": "ml_decoder", "head_args": {"embed_dim": 8}}),
     "(do not fit the|do not make a) (tresnet_m with a )?ml_decoder head"),
    (lambda c: c.update(model_args={"pretrained_cfg_overlay": {"file": "/etc/passwd"}}), "expected model_args"),
    (lambda c: c["pretrained_cfg"].update(input_size=[3, 64, 48]), "input_size to be \\[3, S, S\\]"),
], ids=["architecture", "huge-num-classes", "classes", "label-names", "head", "model-args", "input-size"])
def test_untrusted_configs_are_one_line_errors(folders, photo, tmp_path, caplog, request, edit, message):
    folder = _edited(folders["single_label"], tmp_path / "edited", edit)
    if request.node.callspec.id in ("classes", "head", "input-size"):  # what a plain timm folder says
        (folder / "tresnet_ft.json").unlink()  # (ours would disagree first: tested below)
    line = error_line(caplog, ["predict", str(folder), photo, "-o", str(tmp_path / "p.csv")])
    assert re.search(message, line), line


def test_damaged_folders_are_one_line_errors(folders, photo, tmp_path, caplog):
    def predict(folder: Path) -> str:
        return error_line(caplog, ["predict", str(folder), photo, "-o", str(tmp_path / "p.csv")])

    disagree = _edited(folders["single_label"], tmp_path / "disagree",
                       lambda c: c.update(label_names=["a", "b", "c", "d", "e"]))
    assert "describe different models" in predict(disagree)
    no_weights = _edited(folders["single_label"], tmp_path / "no-weights", lambda c: None)
    (no_weights / "model.safetensors").unlink()
    assert "Expected model.safetensors in" in predict(no_weights)
    not_json = _edited(folders["single_label"], tmp_path / "not-json", lambda c: None)
    (not_json / "config.json").write_text("{architecture: tresnet_m")
    assert "not UTF-8 JSON" in predict(not_json)
    assert "Expected config.json in" in predict(tmp_path)  # a folder, but not a model's
    lying = _edited(folders["single_label"], tmp_path / "lying", lambda c: c.update(num_classes=7, label_names=None))
    with pytest.raises(InvalidValueError, match="do not fit the linear head for 7 classes"):
        create_model("tresnet_m", pretrained=lying)  # checked before the head is built
