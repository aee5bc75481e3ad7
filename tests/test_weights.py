"""Pretrained weights: every supported format, head re-initialisation, refusals, offline errors."""
import hashlib
import io
import logging
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import reference_tresnet_fill
from tests.data_builders import serve_files
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


# --- the download cache: one file per URL, checked against a checksum where one is known ----------

def _small_weights(value: float) -> bytes:
    """A small torch.save file whose tensor is filled with ``value``."""
    buffer = io.BytesIO()
    torch.save({"w": torch.full((4,), value)}, buffer)
    return buffer.getvalue()


def test_two_urls_ending_in_the_same_file_name_keep_their_own_weights(tmp_path, monkeypatch):
    import tresnet_ft.models.weights as weights

    monkeypatch.setattr(weights, "WEIGHTS_CACHE", tmp_path)
    first, second = _small_weights(1.0), _small_weights(2.0)
    with serve_files({"w.pth": first, "other/w.pth": second}) as a, serve_files({"w.pth": second}) as b:
        urls = [a.url("w.pth"), a.url("other/w.pth"), b.url("w.pth")]
        assert all(weights.missing_weights(url) is not None for url in urls)
        paths = [weights.download_url(url) for url in urls]
        assert [path.read_bytes() for path in paths] == [first, second, second]
        assert len(set(paths)) == 3 and all(p.parent == tmp_path and re.fullmatch(r"w-[0-9a-f]{16}\.pth", p.name)
                                            for p in paths)
        assert [weights.download_url(url) for url in urls] == paths  # now from the cache
        assert len(a.requests) == 2 and len(b.requests) == 1
        assert all(weights.missing_weights(url) is None for url in urls)
        assert weights.missing_weights(a.url("third/w.pth")) is not None
    assert [float(weights.read_checkpoint(path)["w"][0]) for path in paths] == [1.0, 2.0, 2.0]


def test_a_sha256_fragment_is_checked_on_download_and_in_the_cache(tmp_path):
    import tresnet_ft.models.weights as weights
    from tresnet_ft.models.weights import ChecksumMismatchError

    good = _small_weights(1.0)
    digest = hashlib.sha256(good).hexdigest()
    with serve_files({"w.pth": good, "bad.pth": _small_weights(2.0)}) as server:
        url = f"{server.url('w.pth')}#sha256={digest.upper()}"
        path = weights.download_url(url, tmp_path)
        assert path.read_bytes() == good and path == weights.url_cache_path(server.url("w.pth"), tmp_path)
        assert server.requests == [("/w.pth", None)]  # the fragment is not sent
        path.write_bytes(b"damaged")
        assert weights.download_url(url, tmp_path).read_bytes() == good and len(server.requests) == 2
        bad = f"{server.url('bad.pth')}#sha256={digest}"
        with pytest.raises(ChecksumMismatchError, match=f"expected SHA-256 {digest}, but the download has "
                                                        f"{hashlib.sha256(_small_weights(2.0)).hexdigest()}"):
            weights.download_url(bad, tmp_path)
        assert not weights.url_cache_path(bad, tmp_path).exists()
    with pytest.raises(ValueError, match="Expected a URL's fragment to be '#sha256=<64 hex digits>'"):
        weights.download_url("http://127.0.0.1:9/w.pth#md5=0123", tmp_path)


def _hub_cache_with_blob(cache: Path, repo_id: str, content: bytes, blob_name: str) -> None:
    """The Hugging Face cache as the hub client writes it: the snapshot's file is a link to
    ``blobs/<blob_name>``, ``blob_name`` being the SHA-256 the hub published for the file."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    (repo / "blobs").mkdir(exist_ok=True)
    (repo / "blobs" / blob_name).write_bytes(content)
    (repo / "snapshots" / sha).mkdir(parents=True, exist_ok=True)
    link = repo / "snapshots" / sha / "model.safetensors"
    link.unlink(missing_ok=True)
    link.symlink_to(Path("..", "..", "blobs", blob_name))


def test_a_cached_hub_file_must_have_the_hash_the_hub_published(tmp_path, monkeypatch):
    from tresnet_ft.models.weights import ChecksumMismatchError, download_from_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    hub_id = PRETRAINED["tresnet_m.miil_in1k"].hub_id
    _hub_cache_with_blob(tmp_path, hub_id, b"published", hashlib.sha256(b"published").hexdigest())
    assert download_from_hub("tresnet_m.miil_in1k").read_bytes() == b"published"
    swapped = hashlib.sha256(b"what the hub published").hexdigest()
    _hub_cache_with_blob(tmp_path, hub_id, b"something else", swapped)
    with pytest.raises(ChecksumMismatchError, match=f"has SHA-256 {hashlib.sha256(b'something else').hexdigest()}, "
                                                    f"but the hub published {swapped}"):
        download_from_hub("tresnet_m.miil_in1k")


# --- bounded reading: a torch.save zip may not unpack beyond its size or the limit ------------------

def test_the_unpacked_size_limit_is_an_environment_variable(tmp_path, monkeypatch):
    from tresnet_ft.models.weights import CheckpointTooLargeError, read_checkpoint

    torch.save({"w": torch.zeros(1 << 18)}, tmp_path / "w.pth")  # 1 MiB of float32
    monkeypatch.setenv("TRESNET_FT_MAX_CHECKPOINT_BYTES", "100000")
    with pytest.raises(CheckpointTooLargeError, match=r"above the limit of 100,000 bytes "
                                                      r"\(TRESNET_FT_MAX_CHECKPOINT_BYTES\)\. Fix: if you trust"):
        read_checkpoint(tmp_path / "w.pth")
    monkeypatch.setenv("TRESNET_FT_MAX_CHECKPOINT_BYTES", str(2 << 20))
    assert read_checkpoint(tmp_path / "w.pth")["w"].numel() == 1 << 18
    monkeypatch.setenv("TRESNET_FT_MAX_CHECKPOINT_BYTES", "16G")
    with pytest.raises(ValueError, match="Expected the environment variable TRESNET_FT_MAX_CHECKPOINT_BYTES to be "
                                         "a positive integer"):
        read_checkpoint(tmp_path / "w.pth")
