"""A file with a pickle payload (unpickling it would create a file) is refused, and its code never
runs, wherever a file from outside is read: ``--model.pretrained``, ``--ckpt_path``, ``predict``
and ``export``. Each refusal is one ``error:`` line and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.classifier_builders import distinct_images, write_image
from tests.run_helpers import error_line, run_command


class _Payload:
    """Unpickling this object creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    """``(checkpoint, marker)``: a file that looks like a tresnet-ft checkpoint plus a payload."""
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "evil.ckpt"
    torch.save(
        {
            "pytorch-lightning_version": "2.6.6",
            "state_dict": {"model.head.fc.bias": torch.zeros(5)},
            "tresnet_ft": {
                "arch": "tresnet_m",
                "classes": list("abcde"),
                "task": "single_label",
                "image_size": 64,
            },
            "callbacks": {"payload": _Payload(marker)},
        },
        checkpoint,
    )
    return checkpoint, marker


def _refused(caplog, args: list[str], marker: Path) -> str:
    message = error_line(caplog, args)
    assert not marker.exists(), "the payload ran"
    assert message.startswith("error: Refusing to load "), message
    return message


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    from tresnet_ft.training import loggers

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loggers, "RUNS_DIR", tmp_path / "runs")
    return tmp_path


def test_predict_refuses_the_payload(evil, workdir, caplog):
    checkpoint, marker = evil
    image = write_image(workdir / "photo.png", distinct_images(1)[0])
    message = _refused(
        caplog, ["predict", str(checkpoint), str(image), "-o", "p.csv"], marker
    )
    assert str(checkpoint) in message and "convert it to .safetensors" in message
    assert not (workdir / "p.csv").exists()


def test_export_refuses_the_payload(evil, workdir, caplog):
    checkpoint, marker = evil
    _refused(
        caplog, ["export", str(checkpoint), "--format", "onnx", "-o", "m.onnx"], marker
    )
    assert not list(workdir.glob("*m.onnx*"))


TINY = [
    "--data.image_size",
    "32",
    "--data.dataset_options",
    '{"num_images": 4}',
    "--logger",
    "csv",
    "--model.plots",
    "false",
]


def test_fit_refuses_the_payload_as_pretrained_weights(evil, workdir, caplog):
    checkpoint, marker = evil
    _refused(caplog, ["fit", *TINY, "--model.pretrained", str(checkpoint)], marker)


def test_validate_refuses_the_payload_as_ckpt_path(evil, workdir, caplog):
    checkpoint, marker = evil
    _refused(caplog, ["validate", *TINY, "--ckpt_path", str(checkpoint)], marker)


@pytest.mark.slow
def test_the_process_exits_2_with_one_line_and_no_traceback(evil, workdir):
    checkpoint, marker = evil
    proc = run_command(["fit", *TINY, "--ckpt_path", str(checkpoint)], cwd=workdir)
    assert proc.returncode == 2 and not marker.exists()
    assert "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: Refusing to load {checkpoint}")
    )


# -- a decompression bomb: refused from its declared sizes, before anything is unpacked ----------


@pytest.fixture
def bomb(tmp_path) -> Path:
    """A checkpoint of 64 MiB of zeros whose records are deflated: a file of about 70 kB that
    ``torch.load`` would inflate 1000x (it reads deflated records as readily as stored ones)."""
    import zipfile

    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(64 << 20, dtype=torch.uint8)}, "tresnet_ft": {}}, plain)
    bomb = tmp_path / "bomb.ckpt"
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as target:
        for entry in source.infolist():
            target.writestr(entry.filename, source.read(entry.filename))
    plain.unlink()
    assert bomb.stat().st_size < (64 << 20) // 500
    return bomb


@pytest.mark.parametrize("command", ["predict", "export", "fit --model.pretrained", "validate --ckpt_path"])
def test_a_decompression_bomb_is_refused_before_it_is_unpacked(bomb, workdir, caplog, command):
    image = write_image(workdir / "photo.png", distinct_images(1)[0])
    args = {"predict": ["predict", str(bomb), str(image), "-o", "p.csv"],
            "export": ["export", str(bomb), "--format", "onnx", "-o", "m.onnx"],
            "fit --model.pretrained": ["fit", *TINY, "--model.pretrained", str(bomb)],
            "validate --ckpt_path": ["validate", *TINY, "--ckpt_path", str(bomb)]}[command]
    message = error_line(caplog, args)
    assert message.startswith(f"error: Refusing to load {bomb}: its records would unpack to 67,109,"), message
    assert "It is a decompression bomb or was not written by torch.save" in message


def test_the_unpacked_size_limit_is_one_line_naming_the_variable(workdir, caplog, monkeypatch):
    checkpoint = workdir / "big.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(1 << 20, dtype=torch.uint8)}}, checkpoint)
    monkeypatch.setenv("TRESNET_FT_MAX_CHECKPOINT_BYTES", "500000")
    message = error_line(caplog, ["export", str(checkpoint), "--format", "onnx", "-o", "m.onnx"])
    assert message.startswith(f"error: Refusing to load {checkpoint}: its records would unpack to 1,04")
    assert "above the limit of 500,000 bytes (TRESNET_FT_MAX_CHECKPOINT_BYTES)" in message
    assert "raise it, e.g. TRESNET_FT_MAX_CHECKPOINT_BYTES=2" in message
