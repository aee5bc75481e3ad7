"""Pretrained weights: every supported format, head re-initialisation, refusals, offline errors."""
import logging
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import reference_tresnet_fill
from tresnet_ft import UnsafeCheckpointError, WeightsUnavailableError, create_model, list_pretrained
from tresnet_ft.models.weights import PRETRAINED, default_tag


@pytest.fixture(scope="module")
def timm_state(parity):
    """tresnet_m weights in timm's keys (10-class head), and the logits they must give."""
    ref = parity["models"]["tresnet_m"]
    return reference_tresnet_fill(ref["manifest"]), ref["logits"], parity["input"]


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def _to_original_format(state):
    """timm keys -> the original TResNet repository's keys and InPlace-ABN scales (|w| + eps)."""
    out = {}
    for key, value in state.items():
        if ".bn." in key and key.endswith("weight"):
            value = (value - 1e-5)  # fill values are ~1 > 0, so |w'| + 1e-5 == w
        if key.startswith("body.layer") and re.search(r"layer[2-4]\.0\.conv[12]\.", key) and \
                ("conv1." in key and "layer2" in key or "conv2." in key and "layer2" not in key):
            key = re.sub(r"conv(\d)\.conv\.", r"conv\1.0.0.", key)
            key = re.sub(r"conv(\d)\.bn\.", r"conv\1.0.1.", key)
        key = re.sub(r"conv(\d)\.conv\.", r"conv\1.0.", key)
        key = re.sub(r"conv(\d)\.bn\.", r"conv\1.1.", key)
        key = re.sub(r"downsample\.(\d)\.conv\.", r"downsample.\1.0.", key)
        key = re.sub(r"downsample\.(\d)\.bn\.", r"downsample.\1.1.", key)
        out[key] = value
    out["body.layer2.0.conv1.1.filt"] = torch.ones(128, 1, 3, 3) / 9  # the original saves its blur kernel
    return out


def test_safetensors_in_timm_keys(tmp_path, timm_state):
    state, logits, x = timm_state
    save_file(state, tmp_path / "model.safetensors")
    model = create_model("tresnet_m", 10, pretrained=tmp_path / "model.safetensors")
    torch.testing.assert_close(_logits(model, x), logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("wrapper", ["model", "state_dict", None])
def test_original_repository_checkpoint(tmp_path, timm_state, wrapper):
    state, logits, x = timm_state
    original = _to_original_format(state)
    assert "body.layer2.0.conv1.0.0.weight" in original and "body.conv1.0.weight" in original
    torch.save({wrapper: original} if wrapper else original, tmp_path / "tresnet_m.pth")
    model = create_model("tresnet_m", 10, pretrained=str(tmp_path / "tresnet_m.pth"))
    torch.testing.assert_close(_logits(model, x), logits, atol=1e-4, rtol=0)


def test_own_lightning_checkpoint(tmp_path, timm_state):
    state, logits, x = timm_state
    ckpt = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.6.6",
            "state_dict": {f"model.{k}": v for k, v in state.items()},
            "hyper_parameters": {"arch": "tresnet_m", "classes": [str(i) for i in range(10)]}}
    torch.save(ckpt, tmp_path / "last.ckpt")
    model = create_model("tresnet_m", 10, pretrained=tmp_path / "last.ckpt", norm="bn")
    torch.testing.assert_close(_logits(model, x), logits, atol=1e-4, rtol=0)


def test_head_of_another_size_is_reinitialised(tmp_path, timm_state, caplog):
    state, _, x = timm_state
    save_file(state, tmp_path / "model.safetensors")
    with caplog.at_level(logging.INFO, logger="tresnet_ft"):
        model = create_model("tresnet_m", 3, pretrained=tmp_path / "model.safetensors")
    assert "re-initialised" in caplog.text and caplog.text.count("re-initialised") == 1
    assert model.head.fc.weight.shape == (3, 2048)
    torch.testing.assert_close(model.body.conv1.conv.weight, state["body.conv1.conv.weight"].contiguous(
        memory_format=torch.channels_last))


def test_other_missing_or_unexpected_keys_are_an_error(tmp_path, timm_state):
    state, _, _ = timm_state
    broken = dict(state)
    broken.pop("body.layer3.0.conv2.conv.weight")
    broken["body.extra.weight"] = torch.zeros(1)
    save_file(broken, tmp_path / "broken.safetensors")
    with pytest.raises(ValueError, match=r"missing \['body.layer3.0.conv2.conv.weight'\].*unexpected \['body.extra.weight'\]"):
        create_model("tresnet_m", 10, pretrained=tmp_path / "broken.safetensors")


def test_weights_of_another_architecture_are_an_error(tmp_path, timm_state):
    state, _, _ = timm_state
    save_file(state, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="another architecture"):
        create_model("tresnet_l", 10, pretrained=tmp_path / "m.safetensors")


class _Payload:
    """Unpickling this object creates a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_payload_is_refused_and_never_runs(tmp_path, timm_state):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": timm_state[0], "evil": _Payload(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="Refusing to load"):
        create_model("tresnet_m", 10, pretrained=tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        create_model("tresnet_m", 10, pretrained=tmp_path / "nope.safetensors")


def test_url_download_into_cache(tmp_path, timm_state, monkeypatch):
    state, logits, x = timm_state
    save_file(state, tmp_path / "remote.safetensors")
    monkeypatch.setattr("tresnet_ft.models.weights.WEIGHTS_CACHE", tmp_path / "cache")
    import tresnet_ft.models.weights as weights
    path = weights.download_url((tmp_path / "remote.safetensors").as_uri(), tmp_path / "cache")
    assert path.parent == tmp_path / "cache" and path.read_bytes() == (tmp_path / "remote.safetensors").read_bytes()
    model = create_model("tresnet_m", 10, pretrained=path)
    torch.testing.assert_close(_logits(model, x), logits, atol=1e-4, rtol=0)


def test_unreachable_url_gives_a_clear_error(tmp_path):
    import tresnet_ft.models.weights as weights
    with pytest.raises(WeightsUnavailableError, match="Could not fetch weights"):
        weights.download_url("http://127.0.0.1:9/tresnet_m.safetensors", tmp_path)


def _fake_hub_cache(cache: Path, repo_id: str, state) -> None:
    """The Hugging Face cache layout: models--org--name/{refs/main, snapshots/<sha>/file}."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    (repo / "snapshots" / sha).mkdir(parents=True)
    save_file(state, repo / "snapshots" / sha / "model.safetensors")


def test_published_tag_loads_from_the_hub_cache_offline(tmp_path, timm_state, monkeypatch):
    state, logits, x = timm_state
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    _fake_hub_cache(tmp_path, PRETRAINED["tresnet_m.miil_in1k"].hub_id, state)
    model = create_model("tresnet_m.miil_in1k", num_classes=10)
    assert model.pretrained_cfg["hub_id"] == "timm/tresnet_m.miil_in1k"
    torch.testing.assert_close(_logits(model, x), logits, atol=1e-4, rtol=0)


def test_offline_without_cache_names_tag_hub_id_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as err:
        create_model("tresnet_l", 10, pretrained=True)
    message = str(err.value)
    assert "tresnet_l.miil_in1k" in message and "timm/tresnet_l.miil_in1k" in message
    assert str(tmp_path) in message and "pretrained=" in message


def test_pretrained_table():
    assert len(list_pretrained()) == 10
    assert list_pretrained("tresnet_v2_l") == ["tresnet_v2_l.miil_in21k_ft_in1k", "tresnet_v2_l.miil_in21k"]
    assert PRETRAINED["tresnet_m.miil_in21k"].num_classes == 11221
    assert all(cfg.mean == (0, 0, 0) and cfg.std == (1, 1, 1) for cfg in PRETRAINED.values())
    assert default_tag("tresnet_m") == "miil_in21k_ft_in1k"
    with pytest.raises(ValueError, match="tag of tresnet_m"):
        create_model("tresnet_m", 10, pretrained="imagenet")
    with pytest.raises(ValueError, match="tresnet_s"):
        create_model("tresnet_s", 10)
