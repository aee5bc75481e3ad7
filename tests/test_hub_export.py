"""``export_hub_folder`` and ``tresnet-ft push``: timm's Hugging Face hub layout, field by field.

timm cannot be imported here (it needs torchvision), so each assertion below names the lines of
timm's loader it stands for (timm at commit aa4b585 of huggingface/pytorch-image-models:
``timm/models/_hub.py``, ``_builder.py``, ``_pretrained.py``, ``_factory.py``, ``tresnet.py``,
``timm/data/config.py`` and ``transforms_factory.py``). The round trip through our own loader is
in ``tests/test_hub_load.py``.
"""
from __future__ import annotations

import http.server
import json
import math
import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open

from classifier_builders import CLASSES, ML_DECODER_ARGS, TAGS, multi_label_checkpoint, single_label_checkpoint
from run_helpers import error_line
from tresnet_ft.classifier.hub_folder import pretrained_cfg_for, preprocessing_from_pretrained_cfg
from tresnet_ft.cli.command import main
from tresnet_ft.data import EvalPreprocessing
from tresnet_ft.errors import InvalidValueError
from tresnet_ft.inference.hub_export import export_hub_folder

# timm/models/_pretrained.py: the fields of PretrainedCfg; resolve_pretrained_cfg() calls
# PretrainedCfg(**pretrained_cfg), so any other key is a TypeError in timm.
TIMM_PRETRAINED_CFG_FIELDS = (
    "url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "architecture", "tag", "custom_load",
    "input_size", "test_input_size", "min_input_size", "fixed_input_size", "interpolation", "crop_pct",
    "test_crop_pct", "crop_mode", "mean", "std", "num_classes", "label_offset", "label_names",
    "label_descriptions", "pool_size", "test_pool_size", "first_conv", "classifier", "license", "description",
    "origin_url", "paper_name", "paper_ids", "notes")
# filter_pretrained_cfg(remove_source=True) drops these; keep_null keeps these when None.
TIMM_SOURCE_FIELDS = {"url", "file", "hf_hub_id", "hf_hub_filename", "source"}
TIMM_KEEP_NULL = {"pool_size", "first_conv", "classifier"}
# timm/models/tresnet.py: TResNet.__init__ keyword arguments (what model_args may set).
TIMM_TRESNET_ARGS = {"layers", "in_chans", "num_classes", "width_factor", "v2", "global_pool", "drop_rate",
                     "drop_path_rate", "device", "dtype"}
FIXTURE_MANIFEST = Path(__file__).parent / "fixtures" / "tresnet_timm_parity.pt"


@pytest.fixture(scope="module")
def single_folder(tmp_path_factory) -> Path:
    return export_hub_folder(single_label_checkpoint(), tmp_path_factory.mktemp("hub") / "single").folder


@pytest.fixture(scope="module")
def multi_folder(tmp_path_factory) -> Path:
    return export_hub_folder(multi_label_checkpoint(), tmp_path_factory.mktemp("hub") / "multi").folder


def _tensors(folder: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        return {key: (tuple(handle.get_slice(key).get_shape()), handle.get_slice(key).get_dtype())
                for key in handle.keys()}


def test_config_json_is_what_timms_loader_reads(single_folder):
    config = json.loads((single_folder / "config.json").read_text())
    # _hub.py save_config_for_hf: these keys, in this order (model_args only when non-empty)
    assert list(config) == ["architecture", "num_classes", "num_features", "global_pool", "label_names",
                            "pretrained_cfg"]
    # _hub.py _parse_model_cfg: "pretrained_cfg" present (else the legacy single-dict path), the
    # architecture is a registered timm model name, num_classes and label_names override the cfg's
    assert config["architecture"] == "tresnet_m" and isinstance(config["pretrained_cfg"], dict)
    assert config["num_classes"] == len(CLASSES) and config["label_names"] == CLASSES
    # informational only ("do not impact model build"): TResNet-M's 2048 pooled features, average pool
    assert config["num_features"] == 2048 and config["global_pool"] == "avg"
    cfg = config["pretrained_cfg"]
    # _builder.py resolve_pretrained_cfg: PretrainedCfg(**cfg) -> only its fields; _pretrained.py
    # filter_pretrained_cfg(remove_source=True, remove_null=True): no source fields, no nulls but keep_null
    assert set(cfg) <= set(TIMM_PRETRAINED_CFG_FIELDS) and not set(cfg) & TIMM_SOURCE_FIELDS
    assert [key for key in cfg if key not in TIMM_KEEP_NULL and cfg[key] is None] == []
    assert list(cfg) == [field for field in TIMM_PRETRAINED_CFG_FIELDS if field in cfg]  # dataclass order
    assert "architecture" not in cfg  # save_config_for_hf pops it to the top level
    # _builder.py _update_default_model_kwargs: in_chans = input_size[0]; num_classes passed to the model
    assert cfg["input_size"] == [3, 64, 64] and cfg["num_classes"] == len(CLASSES)
    # timm/data/config.py resolve_data_config + transforms_imagenet_eval: our squish is "squash" at
    # crop_pct 1 (Resize((S, S)) then CenterCrop(S) crops nothing); mean 0 / std 1 (TResNet's)
    assert (cfg["crop_mode"], cfg["crop_pct"], cfg["interpolation"]) == ("squash", 1.0, "bilinear")
    assert cfg["mean"] == [0.0, 0.0, 0.0] and cfg["std"] == [1.0, 1.0, 1.0]
    # tresnet.py default_cfgs: first_conv and classifier as timm's own TResNet configs name them;
    # _builder.py load_pretrained drops classifier + ".weight"/".bias" when the class count changes
    assert cfg["first_conv"] == "body.conv1.conv" and cfg["classifier"] == "head.fc"
    assert cfg["pool_size"] == [2, 2]  # input / 32, as tresnet.py's (7, 7) at 224


def test_weights_have_timms_keys_and_shapes(single_folder):
    tensors = _tensors(single_folder)
    manifest = torch.load(FIXTURE_MANIFEST, weights_only=True)["models"]["tresnet_m"]["manifest"]
    # _builder.py load_pretrained: model.load_state_dict(state_dict, strict=True): timm's keys, in order
    assert list(tensors) == [key for key, _, _ in manifest] or set(tensors) == {key for key, _, _ in manifest}
    for key, shape, dtype in manifest:  # the fixture's timm model has 10 classes
        expected = (len(CLASSES), *shape[1:]) if key.startswith("head.fc.") else tuple(shape)
        assert tensors[key][0] == expected, key
        assert tensors[key][1] == ("I64" if "int" in dtype else "F32"), key
    # tresnet.py checkpoint_filter_fn: with this key the state dict is used as is (no |w| + eps rescale)
    assert "body.conv1.conv.weight" in tensors
    # _hub.py load_state_dict_from_path: "model.safetensors" is the first of _PREFERRED_FILES
    assert (single_folder / "model.safetensors").is_file() and not (single_folder / "pytorch_model.bin").exists()
    with safe_open(str(single_folder / "model.safetensors"), "pt") as handle:
        assert handle.metadata() == {"format": "pt"}


def test_ml_decoder_keeps_its_head_in_model_args(multi_folder):
    config = json.loads((multi_folder / "config.json").read_text())
    # _factory.py create_model: model_args become TResNet(**kwargs); "head" is not one of timm's, so
    # timm stops there (a TypeError) instead of building a model without the ML-Decoder head
    assert config["model_args"] == {"head": "ml_decoder", "head_args": ML_DECODER_ARGS}
    assert not set(config["model_args"]) <= TIMM_TRESNET_ARGS
    assert config["pretrained_cfg"]["classifier"] is None  # no head.fc.weight to drop
    tensors = _tensors(multi_folder)
    manifest = torch.load(FIXTURE_MANIFEST, weights_only=True)["models"]["tresnet_m"]["manifest"]
    assert {k for k in tensors if not k.startswith("head.")} == {k for k, _, _ in manifest if not k.startswith("head.")}
    assert tensors["head.class_bias"][0] == (len(TAGS),)
    card = (multi_folder / "README.md").read_text()
    assert "timm alone: **not possible**" in card and "timm.create_model(\"hf-hub:ORG/NAME\", pretrained=True)" not in card


def test_metadata_holds_task_classes_and_thresholds_as_plain_json(multi_folder):
    document = json.loads((multi_folder / "tresnet_ft.json").read_text())
    assert document["library"] == "tresnet-ft" and document["format_version"] == 1
    classifier = document["classifier"]
    assert classifier["task"] == "multi_label" and classifier["classes"] == TAGS
    written = torch.load(multi_label_checkpoint(), weights_only=True)["tresnet_ft"]["thresholds"]["per_class"]
    assert classifier["thresholds"]["per_class"] == pytest.approx(written.tolist(), abs=0)
    card = (multi_folder / "README.md").read_text()
    for tag, threshold in zip(TAGS, written.tolist()):
        assert f"| {tag} | {threshold:.4f} |" in card


@pytest.mark.parametrize("size,fraction", [(224, 0.875), (64, 0.87), (448, 0.95), (96, 0.5)])
def test_center_crop_maps_to_timms_floor_rule(size, fraction):
    ours = EvalPreprocessing(size, "center_crop", fraction)
    cfg = pretrained_cfg_for(ours)
    # transforms_imagenet_eval: scale_size = floor(img_size / crop_pct), then CenterCrop(img_size)
    assert cfg["crop_mode"] == "center" and math.floor(size / cfg["crop_pct"]) == ours.resize_side
    back = preprocessing_from_pretrained_cfg(cfg, "test")
    assert (back.eval_crop, back.resize_side, back.image_size) == ("center_crop", ours.resize_side, size)


def test_timms_own_tresnet_config_reads_as_center_crop():
    # tresnet.py _cfg: input_size (3, 224, 224), crop_pct 0.875, no crop_mode (PretrainedCfg: "center")
    cfg = {"input_size": [3, 224, 224], "crop_pct": 0.875, "interpolation": "bilinear", "mean": [0, 0, 0],
           "std": [1, 1, 1]}
    assert preprocessing_from_pretrained_cfg(cfg, "test") == EvalPreprocessing(224, "center_crop", 0.875)
    with pytest.raises(InvalidValueError, match="crop_mode 'border'"):
        preprocessing_from_pretrained_cfg({**cfg, "crop_mode": "border"}, "test")


def _fake_run(root: Path) -> Path:
    """A run folder as `tresnet-ft fit` leaves it, around the single-label checkpoint."""
    run = root / "runs" / "shapes" / "version_3"
    (run / "checkpoints").mkdir(parents=True)
    checkpoint = torch.load(single_label_checkpoint(), weights_only=True)
    checkpoint.update(epoch=1, hyper_parameters={"arch": "tresnet_m", "pretrained": "miil_in21k", "lr": 1e-3,
                                                 "loss": "cross_entropy", "compile": False},
                      datamodule_hyper_parameters={"dataset": "folder", "root": str(root / "secret"),
                                                   "image_size": 64, "batch_size": 8})
    torch.save(checkpoint, run / "checkpoints" / "best.ckpt")
    (run / "metrics.csv").write_text("epoch,step,train/loss_epoch,val/loss,val/top1\n0,4,,1.5,0.4\n"
                                     "1,9,,0.9,0.75\n1,9,1.1,,\n")
    (run / "config.yaml").write_text(yaml.safe_dump({"trainer": {"max_epochs": 2, "precision": "32-true",
                                                                 "callbacks": [{"class_path": "x"}]}}))
    (run / "plots").mkdir()
    for name in ("curves", "confusion_matrix"):
        cv2.imwrite(str(run / "plots" / f"{name}.png"), np.full((8, 8, 3), 200, np.uint8))
    (run / "plots" / "fake.png").write_text("not a png")
    return run / "checkpoints" / "best.ckpt"


def test_the_card_tells_the_run(tmp_path):
    report = export_hub_folder(_fake_run(tmp_path), tmp_path / "card", repo_id="me/shapes")
    folder = report.folder
    card = (folder / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "timm" and {"image-classification", "tresnet-ft"} <= set(front["tags"])
    assert sorted(p.name for p in (folder / "plots").iterdir()) == ["confusion_matrix.png", "curves.png"]
    assert "![curves](plots/curves.png)" in card and "fake" not in card
    assert "| val/top1 | 0.7500 |" in card and "fine-tuned from `tresnet_m.miil_in21k`" in card
    assert 'load_classifier("hf-hub:me/shapes")' in card and 'timm.create_model("hf-hub:me/shapes"' in card
    document = json.loads((folder / "tresnet_ft.json").read_text())
    assert document["validation_metrics"] == {"val/loss": 0.9, "val/top1": 0.75}
    assert document["training"]["trainer"] == {"max_epochs": 2, "precision": "32-true"}
    assert document["training"]["run"] == "shapes" and document["training"]["epoch"] == 1
    for name in ("README.md", "tresnet_ft.json", "config.json"):  # the trainer's paths are not published
        assert "secret" not in (folder / name).read_text()
    assert report.files[:4] == ["config.json", "model.safetensors", "tresnet_ft.json", "README.md"]
    assert str(report).startswith(f"Wrote {folder} in timm's hub layout") and "local-dir:" in str(report)


def test_the_output_folder_is_whole_and_never_someone_elses(tmp_path, single_folder):
    checkpoint = single_label_checkpoint()
    (tmp_path / "file").write_text("x")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for output, match in ((tmp_path / "file", "it is a file"), (foreign, "holds other files"),
                          (checkpoint.parent, "not to hold the input")):
        with pytest.raises(InvalidValueError, match=match):
            export_hub_folder(checkpoint, output)
    assert (foreign / "notes.txt").read_text() == "mine" and (tmp_path / "file").read_text() == "x"
    earlier = tmp_path / "earlier"
    shutil.copytree(single_folder, earlier)
    (earlier / "stale.txt").write_text("from an older export")
    export_hub_folder(checkpoint, earlier)  # an earlier export of ours is replaced as a whole
    assert not (earlier / "stale.txt").exists() and (earlier / "model.safetensors").is_file()
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(InvalidValueError, match="not a tresnet-ft classifier checkpoint"):
        export_hub_folder(tmp_path / "foreign.ckpt", tmp_path / "never")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier", "file", "foreign", "foreign.ckpt"]


# --- push ------------------------------------------------------------------------------------------

class _Answer(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(monkeypatch):
    """The hub's endpoint on 127.0.0.1 (answers the reachability probe) and HfApi's two network calls
    intercepted: what would be sent is recorded, nothing leaves the machine."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    calls: dict = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = {"repo_id": repo_id, "token": self.token, **kwargs}
        from huggingface_hub import RepoUrl
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        calls["upload_folder"] = {"repo_id": repo_id, "folder_path": folder_path, "files": files, **kwargs}

    monkeypatch.setattr("huggingface_hub.HfApi.create_repo", create_repo)
    monkeypatch.setattr("huggingface_hub.HfApi.upload_folder", upload_folder)
    yield calls
    server.shutdown()


def test_push_writes_the_folder_and_sends_it(tmp_path, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    folder = tmp_path / "tagger-hf"
    assert main(["push", str(multi_label_checkpoint()), "--repo", "me/tagger", "--private", "-o", str(folder)]) == 0
    assert hub["create_repo"] == {"repo_id": "me/tagger", "token": "hf_test_token", "private": True,
                                  "exist_ok": True, "repo_type": "model"}
    sent = hub["upload_folder"]
    assert sent["repo_id"] == "me/tagger" and Path(sent["folder_path"]) == folder
    assert sent["files"] == ["README.md", "config.json", "model.safetensors", "tresnet_ft.json"]
    assert 'load_classifier("hf-hub:me/tagger")' in (folder / "README.md").read_text()


def test_push_without_a_token_names_the_folder_and_the_command(tmp_path, hub, monkeypatch, caplog):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no-token"))
    checkpoint = tmp_path / "best.ckpt"
    checkpoint.symlink_to(single_label_checkpoint())
    line = error_line(caplog, ["push", str(checkpoint), "--repo", "me/shapes"])
    folder = tmp_path / "best-hf"  # the default: beside the checkpoint
    assert line.startswith("error: No Hugging Face token") and "\n" not in line
    assert f"The folder {folder} is written" in line and f"`hf upload me/shapes {folder} .`" in line
    assert (folder / "model.safetensors").is_file() and "upload_folder" not in hub
    # the command the error gives uploads the folder as it is, without exporting it again
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    assert main(["push", str(folder), "--repo", "me/shapes"]) == 0
    assert Path(hub["upload_folder"]["folder_path"]) == folder and hub["create_repo"]["private"] is False


def test_push_refuses_a_malformed_repo_before_writing(tmp_path, caplog):
    line = error_line(caplog, ["push", str(single_label_checkpoint()), "--repo", "not a repo", "-o",
                               str(tmp_path / "out")])
    assert "Expected a hub id ORG/NAME" in line and not (tmp_path / "out").exists()


def test_export_command_writes_the_folder_that_loads_back(tmp_path, caplog):
    from tresnet_ft.classifier.checkpoint import load_classifier

    folder = tmp_path / "shapes-hf"
    assert main(["export", str(single_label_checkpoint()), "--format", "hf", "-o", str(folder)]) == 0
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "tresnet_m" and config["label_names"] == list(CLASSES)
    images = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        expected = load_classifier(single_label_checkpoint()).model(images)
        got = load_classifier(folder).model(images)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    line = error_line(caplog, ["export", str(single_label_checkpoint()), "--format", "hf", "--int8", "-o",
                               str(tmp_path / "other")])
    assert "--int8 quantises an ONNX export" in line and not (tmp_path / "other").exists()
