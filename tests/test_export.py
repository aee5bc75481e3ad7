"""export_model: ONNX and TorchScript files compute the checkpoint's logits at any batch size, and
their sidecar JSON is enough to use them without this package."""
from __future__ import annotations

import errno
import json
import logging
import os
import stat
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.classifier_builders import (
    CLASSES,
    IMAGE_SIZE,
    TAGS,
    multi_label_checkpoint,
    reference_model,
    single_label_checkpoint,
)
from tests.run_helpers import error_line
from tresnet_ft import UnsafeCheckpointError
from tresnet_ft.inference.export import ExportCheckError, _onnx_runner, export_model
from tresnet_ft.outputs import DiskFullError

import onnxruntime  # noqa: E402  (a dependency: fail, never skip)


@pytest.fixture
def jit_is_deprecated():
    """torch 2.13 deprecates TorchScript; these tests load (and trace) it on purpose. (A fixture,
    not a filterwarnings mark: the suite also runs with ``-p no:warnings``, which unregisters it.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def _pixels(batch_size: int, seed: int) -> torch.Tensor:
    """Random RGB pixels ``uint8 [B, 3, S, S]``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch_size, 3, IMAGE_SIZE, IMAGE_SIZE), generator=generator,
                         dtype=torch.uint8)


def _expected(checkpoint, pixels: torch.Tensor) -> np.ndarray:
    """Logits ``[B, K]`` of the written (unfused) model for ``pixels``, preprocessed its way."""
    written = reference_model(checkpoint)
    with torch.no_grad():
        return written.model(written.info.preprocessing.to_float(pixels)).numpy()


@pytest.fixture(scope="module")
def onnx_single_label(tmp_path_factory):
    output = tmp_path_factory.mktemp("onnx") / "classifier.onnx"
    return export_model(single_label_checkpoint(), "onnx", output)


@pytest.fixture(scope="module")
def onnx_multi_label_uint8(tmp_path_factory):
    output = tmp_path_factory.mktemp("onnx_uint8") / "tagger.onnx"
    return export_model(multi_label_checkpoint(), "onnx", output, input_dtype="uint8")


@pytest.fixture(scope="module")
def torchscript_multi_label(tmp_path_factory):
    output = tmp_path_factory.mktemp("torchscript") / "tagger.pt"
    return export_model(multi_label_checkpoint(), "torchscript", output, batch_size_check=1)


def test_onnx_matches_pytorch_at_batch_1_and_3(onnx_single_label):
    report = onnx_single_label
    assert report.path.is_file() and report.format == "onnx" and report.opset == 17
    assert report.checked_with == "onnxruntime" and report.checked_batch_sizes == (2, 3)
    assert report.max_abs_diff is not None and report.max_abs_diff < 1e-4
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    (images,), (logits,) = session.get_inputs(), session.get_outputs()
    assert (images.name, images.type, images.shape[1:]) == ("images", "tensor(float)", [3, IMAGE_SIZE, IMAGE_SIZE])
    assert isinstance(images.shape[0], str) and isinstance(logits.shape[0], str)  # dynamic batch axis
    for batch_size, seed in ((1, 10), (3, 11)):
        pixels = _pixels(batch_size, seed)
        got = session.run(["logits"], {"images": (pixels.float() / 255).numpy()})[0]
        assert got.shape == (batch_size, len(CLASSES))
        np.testing.assert_allclose(got, _expected(single_label_checkpoint(), pixels), atol=1e-4, rtol=0)


def test_onnx_with_uint8_input_scales_pixels_inside_the_graph(onnx_multi_label_uint8):
    """The multi-label ML-Decoder head (attention) exports too, behind the uint8 input stage."""
    report = onnx_multi_label_uint8
    assert report.input_dtype == "uint8" and report.max_abs_diff < 1e-4
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    for batch_size, seed in ((1, 20), (3, 21)):
        pixels = _pixels(batch_size, seed)
        got = session.run(["logits"], {"images": pixels.numpy()})[0]
        np.testing.assert_allclose(got, _expected(multi_label_checkpoint(), pixels), atol=1e-4, rtol=0)
    metadata = json.loads(report.sidecar.read_text())
    assert metadata["input"]["dtype"] == "uint8" and "inside the model" in metadata["preprocessing"]["normalisation"]


def test_a_normalising_preprocessing_is_exported_inside_the_uint8_graph_and_described(tmp_path):
    """A backbone with a mean/std: the uint8 graph normalises exactly as the checkpoint's preprocessing
    does, and the sidecar carries the settings (crop rule included) as plain JSON."""
    from tests.classifier_builders import filled_model
    from tresnet_ft.classifier.checkpoint import ClassifierInfo, write_classifier
    from tresnet_ft.data import EvalPreprocessing

    preprocessing = EvalPreprocessing(image_size=IMAGE_SIZE, eval_crop="center_crop", mean=(0.485, 0.456, 0.406),
                                      std=(0.229, 0.224, 0.225))
    model = filled_model(len(CLASSES))
    info = ClassifierInfo(arch="tresnet_m", classes=CLASSES, task="single_label", preprocessing=preprocessing)
    report = export_model(write_classifier(tmp_path / "normalised.ckpt", model, info), "onnx",
                          tmp_path / "normalised.onnx", input_dtype="uint8")
    assert report.max_abs_diff < 1e-4
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    pixels = _pixels(3, seed=40)
    with torch.no_grad():
        expected = model(preprocessing.to_float(pixels)).numpy()
    np.testing.assert_allclose(session.run(["logits"], {"images": pixels.numpy()})[0], expected, atol=1e-4, rtol=0)
    described = json.loads(report.sidecar.read_text())["preprocessing"]
    assert {key: described[key] for key in ("eval_crop", "eval_crop_fraction", "mean", "std")} == {
        key: value for key, value in preprocessing.to_dict().items() if key != "image_size"}
    assert described["resize"].startswith(f"resize the shorter side to {preprocessing.decode_size} ")


def test_torchscript_matches_pytorch_at_batch_1_and_3(torchscript_multi_label, jit_is_deprecated):
    report = torchscript_multi_label
    assert report.checked_with == "torch.jit.load" and report.checked_batch_sizes == (1, 2)
    assert report.opset is None and report.max_abs_diff < 1e-4
    loaded = torch.jit.load(str(report.path))
    for batch_size, seed in ((1, 30), (3, 31)):
        pixels = _pixels(batch_size, seed)
        with torch.no_grad():
            got = loaded(pixels.float() / 255).numpy()
        np.testing.assert_allclose(got, _expected(multi_label_checkpoint(), pixels), atol=1e-4, rtol=0)


def test_the_sidecar_describes_inputs_outputs_and_thresholds_in_plain_json(onnx_single_label,
                                                                          torchscript_multi_label):
    single = json.loads(onnx_single_label.sidecar.read_text(encoding="utf-8"))
    assert onnx_single_label.sidecar.name == "classifier.onnx.json"
    assert (single["task"], single["classes"], single["image_size"]) == ("single_label", CLASSES, IMAGE_SIZE)
    assert single["input"] == {"name": "images", "shape": ["batch", 3, IMAGE_SIZE, IMAGE_SIZE], "dtype": "float32",
                               "layout": "NCHW, RGB channel order"}
    assert single["output"]["activation"] == "softmax" and single["output"]["shape"] == ["batch", len(CLASSES)]
    assert single["preprocessing"]["mean"] == [0.0] * 3 and single["preprocessing"]["std"] == [1.0] * 3
    assert "squish" in single["preprocessing"]["resize"] and single["thresholds"] is None
    assert single["check_max_abs_diff"] == pytest.approx(onnx_single_label.max_abs_diff)

    multi = json.loads(torchscript_multi_label.sidecar.read_text(encoding="utf-8"))
    tuned = reference_model(multi_label_checkpoint()).info.thresholds["per_class"]
    assert (multi["task"], multi["classes"], multi["output"]["activation"]) == ("multi_label", TAGS, "sigmoid")
    assert multi["thresholds"]["per_class"] == pytest.approx(tuned.tolist(), abs=1e-7)
    assert all(type(value) is float for value in multi["thresholds"]["per_class"])
    assert multi["thresholds"]["tuned"]["global_threshold"] == 0.5 and multi["opset"] is None


def test_a_failed_check_leaves_no_file_behind(tmp_path, monkeypatch, jit_is_deprecated):
    """An exporter that produced a wrong graph: the check catches it and nothing is written."""
    import tresnet_ft.inference.export as export_module

    def write_a_wrong_model(format, model, example, path, opset):
        class OffByOne(torch.nn.Module):
            def forward(self, images):
                return model(images) + 1.0

        torch.jit.save(torch.jit.trace(OffByOne(), example, check_trace=False), str(path))

    monkeypatch.setattr(export_module, "_write", write_a_wrong_model)
    output = tmp_path / "model.pt"
    with pytest.raises(ExportCheckError, match=r"differs from PyTorch by up to 1 on a batch of 2"):
        export_model(single_label_checkpoint(), "torchscript", output)
    assert list(tmp_path.iterdir()) == []


def test_without_onnxruntime_the_check_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with caplog.at_level(logging.WARNING, logger="tresnet_ft.inference.export"):
        assert _onnx_runner(tmp_path / "model.onnx") is None
    assert "onnxruntime is not installed" in caplog.text and "pip install onnxruntime" in caplog.text


# --- errors ---------------------------------------------------------------------------------------

def test_an_unknown_format_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"format to be one of \['onnx', 'torchscript'\], but got 'tflite'"):
        export_model(single_label_checkpoint(), "tflite", tmp_path / "model.tflite")
    with pytest.raises(ValueError, match=r"input_dtype to be one of \['float32', 'uint8'\], but got 'float16'"):
        export_model(single_label_checkpoint(), "onnx", tmp_path / "model.onnx", input_dtype="float16")
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_mistakes_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="Expected a tresnet-ft checkpoint file at .*missing.ckpt"):
        export_model(tmp_path / "missing.ckpt", "onnx", tmp_path / "model.onnx")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="not a tresnet-ft classifier checkpoint"):
        export_model(tmp_path / "foreign.ckpt", "onnx", tmp_path / "model.onnx")
    torch.save({"tresnet_ft": logging.getLogger("x")}, tmp_path / "pickled.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="Refusing to load"):
        export_model(tmp_path / "pickled.ckpt", "torchscript", tmp_path / "model.pt")
    with pytest.raises(ValueError, match="is a folder"):
        export_model(single_label_checkpoint(), "onnx", tmp_path)


# --- the outputs: whole or not at all, never over what is not ours --------------------------------

def test_outputs_that_are_not_ours_to_replace_are_one_line(tmp_path, caplog):
    checkpoint = tmp_path / "copy.ckpt"
    checkpoint.write_bytes(single_label_checkpoint().read_bytes())
    before = checkpoint.read_bytes()
    (tmp_path / "model.onnx.json").mkdir()  # where the sidecar would go
    (tmp_path / "null.onnx").symlink_to(os.devnull)
    export = ["export", str(checkpoint), "--format", "onnx", "-o"]
    assert error_line(caplog, [*export, str(tmp_path / "model.onnx")]) == (
        f"error: Expected the output to be a file path, but {tmp_path / 'model.onnx.json'} is a folder. "
        f"Fix: move {tmp_path / 'model.onnx.json'} away (the sidecar is always the model's path plus .json), "
        "or choose another -o.")
    assert (f"{tmp_path / 'null.onnx'} is a character device; writing the output would replace it"
            in error_line(caplog, [*export, str(tmp_path / "null.onnx")]))
    assert f"but {checkpoint} is the input {checkpoint}" in error_line(caplog, [*export, str(checkpoint)])
    assert checkpoint.read_bytes() == before and stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.ckpt", "model.onnx.json", "null.onnx"]


def test_a_failed_export_or_sidecar_keeps_the_previous_files(tmp_path, monkeypatch, jit_is_deprecated):
    """A writer that dies half-way, then a disk that fills up on the sidecar: each time the previous
    model and sidecar stay byte for byte and no partial file is left."""
    import tresnet_ft.inference.export as export_module

    output = tmp_path / "model.pt"
    old = {output: b"previous model", tmp_path / "model.pt.json": b'{"previous": true}\n'}
    for path, data in old.items():
        path.write_bytes(data)

    def dies_half_way(format, model, example, path, opset):
        path.write_bytes(b"PK\x03\x04 half a TorchScript zip")
        raise RuntimeError("exporter crashed")

    with monkeypatch.context() as patch:
        patch.setattr(export_module, "_write", dies_half_way)
        with pytest.raises(RuntimeError, match="exporter crashed"):
            export_model(single_label_checkpoint(), "torchscript", output, check=False)
    assert {path: path.read_bytes() for path in tmp_path.iterdir()} == old

    write_text = Path.write_text

    def disk_full_on_the_sidecar(self, text, *args, **kwargs):
        if self.name.endswith(".json.partial"):
            write_text(self, text[:10], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", disk_full_on_the_sidecar)
    with pytest.raises(DiskFullError, match=rf"No space left on device while writing {output}.json; .* free in "
                                            r".*\. The previous model.pt.json is intact"):
        export_model(single_label_checkpoint(), "torchscript", output, check=False)
    assert {path: path.read_bytes() for path in tmp_path.iterdir()} == old
