"""Downloads (stream, resume, checksum), safe extraction, and the offline error."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.data_builders import serve_files
from tresnet_ft.fetch.archives import extract_archive
from tresnet_ft.fetch.download import (
    DatasetNotFoundError,
    RemoteFile,
    default_data_root,
    download_file,
    ensure_dataset_files,
)

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)  # several 1 MiB chunks, not a multiple of one
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


def test_default_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TRESNET_FT_DATA", str(tmp_path / "data"))
    assert default_data_root() == tmp_path / "data"
    monkeypatch.delenv("TRESNET_FT_DATA")
    assert default_data_root() == Path.home() / ".cache" / "tresnet-ft" / "datasets"


def test_download_from_a_file_url_verifies_the_checksum(tmp_path):
    source = tmp_path / "published.bin"
    source.write_bytes(PAYLOAD)
    dest = download_file(
        source.as_uri(), tmp_path / "out" / "copy.bin", PAYLOAD_MD5, progress=False
    )
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "out" / "copy.bin.part").exists()


def test_checksum_mismatch_removes_the_file_and_says_so(tmp_path):
    source = tmp_path / "published.bin"
    source.write_bytes(PAYLOAD)
    dest = tmp_path / "copy.bin"
    with pytest.raises(
        ValueError, match=f"expected MD5 {'0' * 32}, but got {PAYLOAD_MD5}.*removed"
    ):
        download_file(source.as_uri(), dest, "0" * 32, progress=False)
    assert not dest.exists() and not (tmp_path / "copy.bin.part").exists()


def test_a_partial_download_is_resumed_with_a_range_request(tmp_path):
    dest = tmp_path / "copy.bin"
    (tmp_path / "copy.bin.part").write_bytes(PAYLOAD[:1_000_000])
    with serve_files({"f.bin": PAYLOAD}) as server:
        download_file(server.url("f.bin"), dest, PAYLOAD_MD5, progress=False)
        assert server.requests == [("/f.bin", "bytes=1000000-")]
    assert dest.read_bytes() == PAYLOAD


def test_a_server_without_range_support_restarts_cleanly(tmp_path):
    dest = tmp_path / "copy.bin"
    (tmp_path / "copy.bin.part").write_bytes(b"stale bytes from another file")
    with serve_files({"f.bin": PAYLOAD}, honour_range=False) as server:
        download_file(server.url("f.bin"), dest, PAYLOAD_MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_an_interrupted_download_keeps_its_part_and_resumes(tmp_path):
    dest = tmp_path / "copy.bin"
    with serve_files({"f.bin": PAYLOAD}) as server:
        server.cut_after = [1_500_000]
        with pytest.raises(ConnectionError, match="run again to resume"):
            download_file(server.url("f.bin"), dest, PAYLOAD_MD5, progress=False)
        part = tmp_path / "copy.bin.part"
        assert part.stat().st_size == 1_500_000 and not dest.exists()
        download_file(server.url("f.bin"), dest, PAYLOAD_MD5, progress=False)
        assert server.requests[-1] == ("/f.bin", "bytes=1500000-")
    assert dest.read_bytes() == PAYLOAD


def test_an_existing_good_file_is_not_downloaded_again(tmp_path):
    dest = tmp_path / "copy.bin"
    dest.write_bytes(PAYLOAD)
    with serve_files({}) as server:
        download_file(server.url("missing.bin"), dest, PAYLOAD_MD5, progress=False)
        assert server.requests == []


def test_offline_error_names_dataset_folder_and_files(tmp_path):
    # Port 9 on loopback: nothing listens, so the connection is refused like an offline machine.
    sources = [RemoteFile("http://127.0.0.1:9/data.tgz", "data.tgz", "ab" * 16, extract_to=".")]
    with pytest.raises(DatasetNotFoundError) as caught:
        ensure_dataset_files(
            "toyset",
            tmp_path / "toy",
            ["images", "labels.mat"],
            sources,
            download=True,
            progress=False,
        )
    message = str(caught.value)
    assert "'toyset'" in message and str(tmp_path / "toy") in message
    assert (
        "images, labels.mat" in message
        and "data.tgz" in message
        and "http://127.0.0.1:9/data.tgz" in message
    )
    assert "Downloading failed" in message


def test_download_off_gives_the_same_guidance_without_trying(tmp_path):
    sources = [RemoteFile("http://127.0.0.1:9/data.tgz", "data.tgz", None)]
    with pytest.raises(DatasetNotFoundError, match="missing labels.mat") as caught:
        ensure_dataset_files("toyset", tmp_path, ["labels.mat"], sources, download=False)
    assert "Downloading failed" not in str(caught.value)


# -- extraction --------------------------------------------------------------------------------


def _tar(path: Path, members: list[tarfile.TarInfo], payload: bytes = b"x") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            if member.isfile():
                member.size = len(payload)
                tar.addfile(member, io.BytesIO(payload))
            else:
                tar.addfile(member)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def test_a_good_tar_is_extracted_with_folders_and_internal_links(tmp_path):
    archive = _tar(
        tmp_path / "ok.tar.gz",
        [
            _member("top/a.txt"),
            _member("top/sub/b.txt"),
            _member("top/link", tarfile.SYMTYPE, "a.txt"),
        ],
    )
    extract_archive(archive, tmp_path / "dest", progress=False)
    assert (tmp_path / "dest/top/a.txt").read_bytes() == b"x"
    assert (tmp_path / "dest/top/sub/b.txt").read_bytes() == b"x"
    assert os.readlink(tmp_path / "dest/top/link") == "a.txt"
    assert [p.name for p in (tmp_path / "dest").iterdir()] == ["top"]  # no staging folder left


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_member("/etc/evil"), "absolute path"),
        (_member("top/../../evil"), "climbs out"),
        (_member("top/link", tarfile.SYMTYPE, "../../outside"), "points outside"),
        (_member("top/link", tarfile.SYMTYPE, "/etc/passwd"), "points outside"),
        (_member("top/hard", tarfile.LNKTYPE, "../outside"), "points outside"),
        (_member("top/dev", tarfile.CHRTYPE), "device"),
    ],
)
def test_malicious_tar_members_are_refused_before_anything_is_written(tmp_path, member, reason):
    archive = _tar(tmp_path / "bad.tar.gz", [_member("top/fine.txt"), member])
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match=reason):
        extract_archive(archive, dest, progress=False)
    assert list(dest.iterdir()) == []  # not even the harmless member landed
    assert not (tmp_path / "evil").exists()


def test_zip_with_parent_path_is_refused_and_a_good_zip_extracts(tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as handle:
        handle.writestr("../escape.txt", "x")
    with pytest.raises(ValueError, match="climbs out"):
        extract_archive(bad, tmp_path / "dest", progress=False)
    assert not (tmp_path / "escape.txt").exists()
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as handle:
        handle.writestr("folder/file.txt", "hello")
    extract_archive(good, tmp_path / "dest", progress=False)
    assert (tmp_path / "dest/folder/file.txt").read_text() == "hello"


def test_non_archive_is_rejected(tmp_path):
    path = tmp_path / "plain.tgz"
    path.write_bytes(b"not an archive at all")
    with pytest.raises(ValueError, match="neither"):
        extract_archive(path, tmp_path / "dest", progress=False)



def test_a_corrupt_cached_archive_is_detected_by_checksum_and_replaced(tmp_path):
    """An archive left in the dataset folder (a copy cut short, a flipped bit) whose files were
    never extracted: its MD5 gives it away, and it is downloaded again and extracted."""
    archive = _tar(tmp_path / "toy.tar.gz", [_member("toy/labels.txt")], payload=b"cat\ndog\n")
    good = archive.read_bytes()
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "toy.tar.gz").write_bytes(good[: len(good) // 2])
    with serve_files({"toy.tar.gz": good}) as server:
        sources = [RemoteFile(server.url("toy.tar.gz"), "toy.tar.gz", hashlib.md5(good).hexdigest(), ".")]
        ensure_dataset_files("toyset", folder, ["toy/labels.txt"], sources, download=True, progress=False)
        assert server.requests == [("/toy.tar.gz", None)]  # a fresh download, not a resume of the bad file
    assert (folder / "toy.tar.gz").read_bytes() == good
    assert (folder / "toy" / "labels.txt").read_bytes() == b"cat\ndog\n"


def test_an_interrupted_weights_download_resumes_and_a_corrupt_cached_one_is_fetched_again(
    tmp_path, caplog, monkeypatch
):
    """Pretrained weights from a URL: a cut connection leaves only a ``.part`` file (never a
    truncated file that looks cached), the next attempt resumes it, and a cached file that no
    longer reads is downloaded again."""
    import torch
    from safetensors.torch import save

    from tresnet_ft import WeightsUnavailableError, create_model
    from tresnet_ft.models.weights import download_url, url_cache_path

    state = {k: v.contiguous() for k, v in create_model("tresnet_m", 3, norm="bn").state_dict().items()}
    blob = save(state)
    cache = tmp_path / "cache"
    monkeypatch.setattr("tresnet_ft.models.weights.WEIGHTS_CACHE", cache)
    with serve_files({"m.safetensors": blob}) as server:
        server.cut_after = [len(blob) // 3]
        with pytest.raises(WeightsUnavailableError, match="stopped after .* run again to resume"):
            download_url(server.url("m.safetensors"))
        cached = url_cache_path(server.url("m.safetensors"), cache)  # keyed by the whole URL
        assert cached.name.startswith("m-") and cached.suffix == ".safetensors"
        assert [p.name for p in cache.iterdir()] == [cached.name + ".part"]
        path = download_url(server.url("m.safetensors"), cache)
        assert server.requests[-1] == ("/m.safetensors", f"bytes={len(blob) // 3}-")
        assert path.read_bytes() == blob
        path.write_bytes(blob[:1000])  # the cached copy gets damaged
        model = create_model("tresnet_m", 3, norm="bn", pretrained=server.url("m.safetensors"),
                             channels_last=False)
        assert server.requests[-1] == ("/m.safetensors", None)
    assert "is corrupt; downloading it again" in caplog.text
    torch.testing.assert_close(model.body.conv1.conv.weight, state["body.conv1.conv.weight"])
