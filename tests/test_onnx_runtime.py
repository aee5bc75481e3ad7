"""predict through ONNX Runtime: the same rows as PyTorch, the export cache, and unusable models refused."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.classifier_builders import multi_label_checkpoint, single_label_checkpoint, write_photo_folder
from tests.run_helpers import error_line
from tresnet_ft.errors import InvalidValueError, MissingInputError
from tresnet_ft.inference.onnx_cache import onnx_cache_folder
from tresnet_ft.inference.onnx_runtime import OnnxRuntime, inference_threads
from tresnet_ft.inference.predict import predict_to_file
from tresnet_ft.inference.runtime import open_runtime
from tresnet_ft.inference.sidecar import sidecar_path

pytestmark = pytest.mark.slow  # each checkpoint's first ONNX Runtime run exports it (~10 s)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One export cache for the module, so each checkpoint is exported once."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRESNET_FT_CACHE", str(folder))
        yield folder / "onnx"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    readable, unreadable = write_photo_folder(root)  # a truncated JPEG and an empty PNG among them
    return root, readable, unreadable


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _predict_both(source: Path, folder: Path, tmp_path: Path, onnx_source: Path | None = None):
    """``(torch summary, torch rows, onnxruntime summary, onnxruntime rows)`` for the same images."""
    by_torch = predict_to_file(source, [folder], tmp_path / "torch.jsonl", top_k=5, batch_size=3, num_workers=0,
                               progress=False, runtime="torch")
    by_ort = predict_to_file(onnx_source or source, [folder], tmp_path / "ort.jsonl", top_k=5, batch_size=3,
                             num_workers=0, progress=False, runtime="onnxruntime")
    return by_torch, _rows(tmp_path / "torch.jsonl"), by_ort, _rows(tmp_path / "ort.jsonl")


def _assert_same_rows(torch_rows: list[dict], ort_rows: list[dict], labels: str, scores: str) -> None:
    assert [row["path"] for row in ort_rows] == [row["path"] for row in torch_rows]
    for ours, theirs in zip(ort_rows, torch_rows):
        assert ours[labels] == theirs[labels], ours["path"]
        assert torch.allclose(torch.tensor(ours[scores]), torch.tensor(theirs[scores]), atol=1e-4, rtol=0)


def test_single_label_rows_equal_the_pytorch_rows_and_unreadable_files_are_listed(cache, photos, tmp_path):
    folder, readable, unreadable = photos
    by_torch, torch_rows, by_ort, ort_rows = _predict_both(single_label_checkpoint(), folder, tmp_path)
    _assert_same_rows(torch_rows, ort_rows, "labels", "probabilities")
    assert len(ort_rows) == len(readable) == by_ort.num_predicted
    assert [path for path, _ in by_ort.unreadable] == [str(path) for path in unreadable]
    assert by_ort.unreadable == by_torch.unreadable
    assert len({row["labels"][0] for row in ort_rows}) > 1  # the model tells the photos apart


def test_multi_label_rows_equal_the_pytorch_rows(cache, photos, tmp_path):
    folder, readable, _ = photos
    _, torch_rows, _, ort_rows = _predict_both(multi_label_checkpoint(), folder, tmp_path)
    _assert_same_rows(torch_rows, ort_rows, "tags", "scores")
    assert 0 < sum(len(row["tags"]) for row in ort_rows) < len(readable) * 4  # thresholds cut both ways


def test_an_exported_onnx_with_its_sidecar_predicts_the_same_rows(cache, photos, tmp_path):
    checkpoint = single_label_checkpoint()
    exported = open_runtime(checkpoint, "onnxruntime").path  # fills the cache (or finds it filled)
    assert exported.parent == cache
    model = shutil.copy(exported, tmp_path / "model.onnx")
    shutil.copy(sidecar_path(exported), sidecar_path(Path(model)))
    assert open_runtime(model).name == "onnxruntime"  # auto: an .onnx runs in ONNX Runtime
    _, torch_rows, _, ort_rows = _predict_both(checkpoint, photos[0], tmp_path, onnx_source=Path(model))
    _assert_same_rows(torch_rows, ort_rows, "labels", "probabilities")


def test_the_cache_is_reused_and_a_changed_checkpoint_is_exported_again(cache, tmp_path, caplog):
    checkpoint = shutil.copy(single_label_checkpoint(), tmp_path / "model.ckpt")
    with caplog.at_level(logging.INFO, logger="tresnet_ft.inference"):
        first = open_runtime(checkpoint, "onnxruntime")
        entries = {path: path.stat().st_mtime_ns for path in cache.glob("*.onnx")}
        caplog.clear()
        second = open_runtime(checkpoint, "onnxruntime")  # a copy with the same bytes: the same entry
        assert second.path == first.path and "Using the cached ONNX export" in caplog.text
        assert {path: path.stat().st_mtime_ns for path in cache.glob("*.onnx")} == entries
        # Change one weight: the content key changes, so the model is exported again.
        state = torch.load(checkpoint, weights_only=True)
        state["state_dict"]["model.head.fc.bias"] += 1.0
        torch.save(state, checkpoint)
        caplog.clear()
        changed = open_runtime(checkpoint, "onnxruntime")
    assert changed.path != first.path and "Exporting model.ckpt to ONNX once" in caplog.text
    assert set(cache.glob("*.onnx")) == set(entries) | {changed.path}
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    assert torch.allclose(changed.logits(images), first.logits(images) + 1.0, atol=1e-4)


def test_the_cache_folder_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("TRESNET_FT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert onnx_cache_folder() == tmp_path / "xdg" / "tresnet-ft" / "onnx"
    monkeypatch.setenv("TRESNET_FT_CACHE", str(tmp_path / "mine"))
    assert onnx_cache_folder() == tmp_path / "mine" / "onnx"


def test_threads_are_the_physical_cores_this_process_may_use():
    threads = inference_threads()
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 1 <= threads <= allowed


@pytest.fixture()
def exported(cache, tmp_path):
    """A copy of the single-label checkpoint's cached export and its sidecar in ``tmp_path``."""
    source = open_runtime(single_label_checkpoint(), "onnxruntime").path
    model = tmp_path / "model.onnx"
    shutil.copy(source, model)
    shutil.copy(sidecar_path(source), sidecar_path(model))
    return model


def test_an_onnx_without_its_sidecar_is_one_line(exported, photos, caplog):
    sidecar_path(exported).unlink()
    with pytest.raises(MissingInputError, match="Expected model.onnx.json next to"):
        OnnxRuntime(exported)
    line = error_line(caplog, ["predict", str(exported), str(photos[0]), "-o", str(exported.with_suffix(".csv"))])
    assert "model.onnx.json" in line and "Fix:" in line


def test_a_broken_onnx_or_sidecar_is_one_line(exported, photos, caplog):
    sidecar = json.loads(sidecar_path(exported).read_text())
    sidecar_path(exported).write_text("{not json")
    with pytest.raises(InvalidValueError, match="Cannot use .*model.onnx.json"):
        OnnxRuntime(exported)
    sidecar_path(exported).write_text(json.dumps({**sidecar, "classes": ["a", "b"]}))  # 2 classes, the model has 5
    with pytest.raises(InvalidValueError, match=r"output 'logits' \[B, 2\], but the model has"):
        OnnxRuntime(exported)
    sidecar_path(exported).write_text(json.dumps({**sidecar, "task": "regression"}))
    with pytest.raises(InvalidValueError, match="expected task to be one of"):
        OnnxRuntime(exported)
    sidecar_path(exported).write_text(json.dumps(sidecar))
    exported.write_bytes(exported.read_bytes()[:5000])  # a truncated download
    line = error_line(caplog, ["predict", str(exported), str(photos[0]), "-o", str(exported.with_suffix(".csv"))])
    assert "ONNX Runtime cannot load it" in line and "Fix:" in line


def test_runtime_mistakes_are_one_line(exported, photos, caplog, tmp_path):
    line = error_line(caplog, ["predict", str(exported), str(photos[0]), "--runtime", "torch",
                               "-o", str(tmp_path / "p.csv")])
    assert "is an ONNX model" in line and "--runtime onnxruntime" in line
    with pytest.raises(InvalidValueError, match="Expected runtime to be one of"):
        predict_to_file(exported, [photos[0]], tmp_path / "p.csv", runtime="tensorrt")
    with pytest.raises(InvalidValueError, match="runs on the CPU"):
        open_runtime(exported, "onnxruntime", device="cuda")


def test_auto_runs_small_cpu_batches_in_onnx_runtime_and_large_ones_in_pytorch(cache):
    checkpoint = single_label_checkpoint()
    assert open_runtime(checkpoint, device="cpu", max_batch_size=8).name == "onnxruntime"  # serve's batches
    assert open_runtime(checkpoint, device="cpu", max_batch_size=32).name == "torch"  # predict's batches


def test_a_hub_folder_runs_in_onnx_runtime_through_the_cache(cache, tmp_path):
    from tresnet_ft.inference.hub_export import export_hub_folder

    folder = export_hub_folder(multi_label_checkpoint(), tmp_path / "tagger").folder
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    first = open_runtime(folder, "onnxruntime")
    torch.testing.assert_close(first.logits(images), open_runtime(folder, "torch", device="cpu").logits(images),
                               atol=1e-4, rtol=0)
    (folder / "README.md").write_text("an edited card")  # not part of the model: the same entry
    assert open_runtime(folder, "onnxruntime").path == first.path
    assert first.info.thresholds is not None and first.info.classes == open_runtime(folder, "torch").info.classes
