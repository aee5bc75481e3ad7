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
