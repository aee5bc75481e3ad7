"""predict_to_file: rows match the checkpoint's model, in path order, streamed; bad files are listed."""
from __future__ import annotations

import csv
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.classifier_builders import (
    CLASSES,
    IMAGE_SIZE,
    TAGS,
    distinct_images,
    multi_label_checkpoint,
    reference_logits,
    single_label_checkpoint,
    write_image,
    write_photo_folder,
)
from tests.run_helpers import error_line, start_command
from tresnet_ft import UnsafeCheckpointError
from tresnet_ft.classifier.checkpoint import ClassifierInfo
from tresnet_ft.data import EvalPreprocessing
from tresnet_ft.inference.predict import predict_to_file
from tresnet_ft.outputs import partial_path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """``(folder, readable, unreadable)``; see :func:`write_photo_folder`."""
    root = tmp_path_factory.mktemp("photos")
    readable, unreadable = write_photo_folder(root)
    return root, readable, unreadable


@pytest.fixture(scope="module")
def single_label():
    return single_label_checkpoint()


@pytest.fixture(scope="module")
def multi_label():
    return multi_label_checkpoint()


def _csv_rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def _jsonl_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _expected_top_k(checkpoint: Path, paths, k: int) -> tuple[list[list[str]], torch.Tensor]:
    probabilities = reference_logits(checkpoint, paths).softmax(dim=1)
    top_p, top_i = probabilities.topk(k, dim=1)
    return [[CLASSES[i] for i in row] for row in top_i.tolist()], top_p


class StandInRuntime:
    """A :class:`~tresnet_ft.inference.runtime.Runtime` whose logits come from ``model`` (a stand-in
    network), fed the uint8 batches scaled the checkpoint's way into one reused buffer, as the
    PyTorch runtime does."""

    name, device = "stand-in", torch.device("cpu")

    def __init__(self, model, info: ClassifierInfo, batch_size: int = 32) -> None:
        from tresnet_ft.inference.stream import FloatInput

        self.model, self.info = model, info
        self._to_float = FloatInput(batch_size, info.preprocessing, self.device)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self._to_float(images))


def _stand_in(monkeypatch, model, info: ClassifierInfo) -> None:
    import tresnet_ft.inference.predict as predict_module

    monkeypatch.setattr(predict_module, "open_runtime", lambda *_, **__: StandInRuntime(model, info))


# --- single-label ---------------------------------------------------------------------------------

def test_single_label_csv_holds_the_models_top_k_in_path_order(single_label, photos, tmp_path, caplog):
    folder, readable, unreadable = photos
    output = tmp_path / "out" / "predictions.csv"
    with caplog.at_level(logging.WARNING, logger="tresnet_ft.inference.predict"):
        # two workers, small batches: the worker that decoded a batch must not change the row order
        summary = predict_to_file(single_label, [folder], output, top_k=3, batch_size=2, num_workers=2,
                                  progress=False)
    header, rows = _csv_rows(output)
    assert header == ["path", "top1_label", "top1_prob", "top2_label", "top2_prob", "top3_label", "top3_prob"]
    assert [row["path"] for row in rows] == [str(path) for path in readable]
    labels, probabilities = _expected_top_k(single_label, readable, 3)
    assert len({row[0] for row in labels}) > 1, "the photos should not all get the same top class"
    for row, want_labels, want_probs in zip(rows, labels, probabilities):
        assert [row[f"top{r}_label"] for r in (1, 2, 3)] == want_labels
        got = [float(row[f"top{r}_prob"]) for r in (1, 2, 3)]
        assert got == sorted(got, reverse=True)
        np.testing.assert_allclose(got, want_probs.numpy(), atol=1e-5)
    assert (summary.num_images, summary.num_predicted) == (len(readable) + len(unreadable), len(readable))
    assert summary.unreadable == [(str(unreadable[0]), "truncated JPEG (no end-of-image marker)"),
                                  (str(unreadable[1]), "zero-byte file")]
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"Skipped 2 unreadable image(s) of {len(readable) + 2}" in warnings[0]
    assert "broken.jpg (truncated JPEG" in warnings[0] and "empty.png (zero-byte file)" in warnings[0]


def test_tables_list_images_relative_to_themselves_and_top_k_is_capped(single_label, photos, tmp_path):
    """A CSV with a relative path and a missing file, then a JSONL with an absolute path; asking
    for more classes than exist gives all of them, with probabilities summing to one."""
    _, readable, _ = photos
    tables = tmp_path / "tables"
    tables.mkdir()
    relative = os.path.relpath(readable[3], tables)
    (tables / "list.csv").write_text(f"labels,image\ncat,{relative}\ndog,missing.png\n", encoding="utf-8")
    (tables / "more.jsonl").write_text(json.dumps({"image": str(readable[0]), "split": "test"}) + "\n\n",
                                       encoding="utf-8")
    output = tmp_path / "predictions.jsonl"
    summary = predict_to_file(single_label, [tables / "list.csv", tables / "more.jsonl"], output, top_k=50,
                              num_workers=0, progress=False)
    rows = _jsonl_rows(output)
    assert [row["path"] for row in rows] == [str(readable[3].resolve()), str(readable[0].resolve())]
    labels, probabilities = _expected_top_k(single_label, [readable[3], readable[0]], len(CLASSES))
    for row, want_labels, want_probs in zip(rows, labels, probabilities):
        assert set(row) == {"path", "labels", "probabilities"}
        assert row["labels"] == want_labels and sorted(row["labels"]) == CLASSES
        assert sum(row["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(row["probabilities"], want_probs.numpy(), atol=1e-5)
    assert summary.unreadable == [(str((tables / "missing.png").resolve()),
                                   "cannot open (No such file or directory)")]


# --- multi-label ----------------------------------------------------------------------------------

def test_multi_label_rows_hold_the_tags_above_their_tuned_thresholds(multi_label, photos, tmp_path):
    folder, readable, _ = photos
    output = tmp_path / "tags.csv"
    predict_to_file(multi_label, [folder], output, top_k=1, num_workers=0, progress=False)
    header, rows = _csv_rows(output)
    assert header == ["path", "tags", "scores"]
    scores = reference_logits(multi_label, readable).sigmoid()
    thresholds = torch.load(multi_label, weights_only=True)["tresnet_ft"]["thresholds"]["per_class"]
    assert (scores - thresholds).abs().min() > 1e-4, "a score on a threshold would make this test flaky"
    passed = scores > thresholds
    assert (passed != (scores > 0.5)).any(), "the tuned thresholds, not 0.5, must decide somewhere"
    assert [row["path"] for row in rows] == [str(path) for path in readable]
    for row, row_scores, row_passed in zip(rows, scores, passed):
        tags = row["tags"].split(";") if row["tags"] else []
        got = [float(value) for value in row["scores"].split(";")] if row["scores"] else []
        assert tags == sorted(tags, key=lambda tag: -row_scores[TAGS.index(tag)].item())  # best first
        assert set(tags) == {TAGS[i] for i in np.flatnonzero(row_passed.numpy())}
        np.testing.assert_allclose(got, [row_scores[TAGS.index(tag)].item() for tag in tags], atol=1e-5)


def test_a_threshold_override_applies_to_every_tag(multi_label, photos, tmp_path):
    folder, readable, _ = photos
    output = tmp_path / "tags.jsonl"
    predict_to_file(multi_label, [folder], output, threshold=0.5, num_workers=0, progress=False)
    rows = _jsonl_rows(output)
    scores = reference_logits(multi_label, readable).sigmoid()
    assert (scores - 0.5).abs().min() > 1e-4, "a score on the threshold would make this test flaky"
    for row, row_scores in zip(rows, scores):
        assert set(row) == {"path", "tags", "scores"}
        assert set(row["tags"]) == {TAGS[i] for i in np.flatnonzero((row_scores > 0.5).numpy())}
        assert all(score > 0.5 for score in row["scores"])


# --- streaming ------------------------------------------------------------------------------------

def test_rows_reach_the_file_as_each_batch_finishes(photos, tmp_path, monkeypatch):
    """The model sees batch i+1 only after batch i's rows are on disk: nothing is held back.
    The rows stream into the hidden partial file beside the output, which appears only, whole,
    at the end (the output is atomic). (A stand-in model: this is about the loop and the writer,
    not the network.)"""

    folder, _, _ = photos
    output = tmp_path / "predictions.csv"
    lines_on_disk_at_each_batch = []

    def model(images):
        assert images.shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE)
        assert not output.exists(), "a run still going must not leave a file that looks complete"
        lines_on_disk_at_each_batch.append(len(partial_path(output).read_text().splitlines()))
        return torch.zeros(len(images), len(CLASSES))

    info = ClassifierInfo(arch="tresnet_m", classes=CLASSES, task="single_label",
                          preprocessing=EvalPreprocessing(IMAGE_SIZE))
    _stand_in(monkeypatch, model, info)
    predict_to_file("unused.ckpt", [folder], output, batch_size=2, num_workers=0, progress=False)
    # Sorted paths in batches of 2: [a, b] [broken, c] [f, d] [e, empty] [g] -> 2, 1, 2, 1, 1 rows.
    assert lines_on_disk_at_each_batch == [1, 3, 4, 6, 7]
    assert len(output.read_text().splitlines()) == 8
    assert sorted(path.name for path in tmp_path.iterdir()) == ["predictions.csv"]  # the partial was renamed


def test_a_run_with_no_readable_image_writes_just_the_header(photos, tmp_path, monkeypatch):
    info = ClassifierInfo(arch="tresnet_m", classes=TAGS, task="multi_label",
                          preprocessing=EvalPreprocessing(IMAGE_SIZE))
    _stand_in(monkeypatch, None, info)
    _, _, unreadable = photos
    summary = predict_to_file("unused.ckpt", unreadable, tmp_path / "tags.csv", progress=False)
    assert (tmp_path / "tags.csv").read_text().splitlines() == ["path,tags,scores"]
    assert summary.num_predicted == 0 and len(summary.unreadable) == 2


# Runs in a fresh process. The network is a stand-in (mean colour -> 5 logits): memory flatness is
# about the listing, loading, batching and writing around it, and the real network at 128 px on 2
# CPU cores would need minutes for thousands of images (its per-batch memory does not depend on
# how many batches came before). The main process's peak is VmHWM, which exec resets;
# ru_maxrss would still include the pytest process this one was forked from.
_MEMORY_SCRIPT = """
import json, resource, sys
from pathlib import Path
import torch
import tresnet_ft.inference.predict as predict
from tresnet_ft.classifier.checkpoint import ClassifierInfo
from tresnet_ft.data import EvalPreprocessing
from tresnet_ft.inference.stream import FloatInput

info = ClassifierInfo(arch="tresnet_m", classes=list("abcde"), task="single_label",
                      preprocessing=EvalPreprocessing(128))
weights = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))

class StandIn:  # the Runtime interface, scaling into one reused buffer as the PyTorch runtime does
    name, device = "stand-in", torch.device("cpu")

    def __init__(self):
        self.info, self.to_float = info, FloatInput(32, info.preprocessing, self.device)

    def logits(self, images):
        return self.to_float(images).mean((2, 3)) @ weights


predict.open_runtime = lambda *_, **__: StandIn()
summary = predict.predict_to_file("stand-in.ckpt", [sys.argv[1]], Path(sys.argv[2]), batch_size=32,
                                  num_workers=1, progress=False)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({"predicted": summary.num_predicted, "main_kb": int(status["VmHWM"].split()[0]),
                  "worker_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def _peak_rss(source: Path, output: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(source), str(output)],
                          capture_output=True, text=True, env=env, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak memory from Linux's /proc")
def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """4x the images, same peak RSS in the main process and in the loader worker.

    Holding every preprocessed image (uint8 [3, 128, 128], 49 KB) would add 3N x 49 KB = 74 MB,
    and every decoded source image 3N x 27 KB = 40 MB; the allowance is 16 MB. (Before batches
    were built in shared memory and scaled into a reused buffer, heap fragmentation alone grew
    the worker or the main process by over 300 MB in some runs.)
    """
    few = 500
    folder = tmp_path / "many"
    base = distinct_images(8, height=96, width=96)
    paths = [write_image(folder / f"{i:05d}.png", np.roll(base[i % 8], i, axis=1)) for i in range(4 * few)]
    table = tmp_path / "few.csv"
    table.write_text("image\n" + "".join(f"{path}\n" for path in paths[:few]), encoding="utf-8")
    small = _peak_rss(table, tmp_path / "few.jsonl")
    large = _peak_rss(folder, tmp_path / "many.jsonl")
    assert (small["predicted"], large["predicted"]) == (few, 4 * few)
    growth_mb = {key: (large[key] - small[key]) / 1024 for key in ("main_kb", "worker_kb")}
    assert growth_mb["main_kb"] < 16 and growth_mb["worker_kb"] < 16, (small, large)


# --- errors ---------------------------------------------------------------------------------------

def test_a_missing_checkpoint_says_where_it_looked(photos, tmp_path):
    with pytest.raises(FileNotFoundError, match="Expected a tresnet-ft checkpoint file at .*nope.ckpt"):
        predict_to_file(tmp_path / "nope.ckpt", [photos[0]], tmp_path / "p.csv", progress=False)


def test_a_foreign_checkpoint_is_refused(photos, tmp_path):
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not a tresnet-ft classifier checkpoint"):
        predict_to_file(tmp_path / "other.ckpt", [photos[0]], tmp_path / "p.csv", progress=False)


def test_a_pickled_payload_is_refused_without_running_it(photos, tmp_path):
    torch.save({"tresnet_ft": Path("payload")}, tmp_path / "pickled.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="Refusing to load"):
        predict_to_file(tmp_path / "pickled.ckpt", [photos[0]], tmp_path / "p.csv", progress=False)


@pytest.mark.parametrize("name", ["predictions.txt", "predictions"])
def test_the_output_must_be_csv_or_jsonl(single_label, photos, tmp_path, name):
    with pytest.raises(ValueError, match=r"end in \.csv or \.jsonl, but got .*" + name):
        predict_to_file(single_label, [photos[0]], tmp_path / name, progress=False)


def test_no_images_found_names_the_places_searched(single_label, tmp_path):
    empty = tmp_path / "empty"
    (empty / ".git").mkdir(parents=True)
    write_image(empty / ".git" / "icon.png", distinct_images(1)[0])
    (empty / "readme.md").write_text("hi")
    (tmp_path / "none.csv").write_text("image\n")
    with pytest.raises(ValueError, match=r"found none in .*empty \(folder, searched recursively\), "
                                         r".*none.csv \(table with no rows\)"):
        predict_to_file(single_label, [empty, tmp_path / "none.csv"], tmp_path / "p.csv",
                        progress=False)


def test_a_table_without_an_image_column_is_refused(single_label, tmp_path):
    (tmp_path / "list.csv").write_text("file,labels\na.jpg,cat\n")
    with pytest.raises(ValueError, match=r"Expected an 'image' column in .*list.csv, but got columns "
                                         r"\['file', 'labels'\]"):
        predict_to_file(single_label, [tmp_path / "list.csv"], tmp_path / "p.csv", progress=False)


def test_a_missing_input_is_named(single_label, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing exists there"):
        predict_to_file(single_label, [tmp_path / "nowhere"], tmp_path / "p.csv", progress=False)


def test_a_threshold_is_refused_for_single_label_and_bad_values(single_label, photos, tmp_path):
    with pytest.raises(ValueError, match="threshold applies to multi-label checkpoints"):
        predict_to_file(single_label, [photos[0]], tmp_path / "p.csv", threshold=0.3,
                        progress=False)
    with pytest.raises(ValueError, match=r"threshold to be a probability in \[0, 1\]"):
        predict_to_file(single_label, [photos[0]], tmp_path / "p.csv", threshold=2.0,
                        progress=False)
    with pytest.raises(ValueError, match="top_k to be an integer of at least 1, but got 0"):
        predict_to_file(single_label, [photos[0]], tmp_path / "p.csv", top_k=0, progress=False)


# --- the output: whole or not at all, never over what is not ours ---------------------------------

def test_an_output_that_is_an_input_or_not_a_regular_file_is_one_line(single_label, photos, tmp_path, caplog):
    _, readable, _ = photos
    table = tmp_path / "list.csv"
    table.write_text(f"image\n{readable[0]}\n", encoding="utf-8")
    (tmp_path / "to_image.csv").symlink_to(readable[1])  # an input image, under an output's name
    (tmp_path / "folder.csv").mkdir()
    os.mkfifo(tmp_path / "pipe.csv")
    predict = ["predict", str(single_label), str(table), str(readable[1]), "-o"]
    assert error_line(caplog, [*predict, str(table)]) == (
        f"error: Expected the output to be a file other than the inputs, but {table} is the input {table}; "
        "writing it would replace that input. Fix: choose another output path, e.g. -o list_out.csv.")
    assert f"is the input {readable[1]}" in error_line(caplog, [*predict, str(tmp_path / "to_image.csv")])
    assert error_line(caplog, [*predict, str(tmp_path / "folder.csv")]) == (
        f"error: Expected the output to be a file path, but {tmp_path / 'folder.csv'} is a folder. "
        f"Fix: name a file inside it, e.g. -o {tmp_path / 'folder.csv' / 'predictions.csv'}.")
    assert "pipe.csv is a FIFO (named pipe); writing the output would replace it" in error_line(
        caplog, [*predict, str(tmp_path / "pipe.csv")])
    assert table.read_text(encoding="utf-8") == f"image\n{readable[0]}\n" and (tmp_path / "folder.csv").is_dir()
    assert stat.S_ISFIFO(os.stat(tmp_path / "pipe.csv").st_mode) and (tmp_path / "to_image.csv").is_symlink()


def test_an_error_mid_run_keeps_the_previous_output_whole(photos, tmp_path, monkeypatch):
    output = tmp_path / "predictions.jsonl"
    output.write_bytes(b'{"path": "old run", "labels": ["ant"], "probabilities": [1.0]}\n')
    before = output.read_bytes()
    batches = []

    def model(images):  # the second batch fails, after the first batch's rows were written
        batches.append(len(images))
        if len(batches) == 2:
            raise RuntimeError("out of memory on batch 2")
        return torch.zeros(len(images), len(CLASSES))

    info = ClassifierInfo(arch="tresnet_m", classes=CLASSES, task="single_label",
                          preprocessing=EvalPreprocessing(IMAGE_SIZE))
    _stand_in(monkeypatch, model, info)
    with pytest.raises(RuntimeError, match="out of memory on batch 2"):
        predict_to_file("unused.ckpt", [photos[0]], output, batch_size=2, num_workers=0, progress=False)
    assert output.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [output.name]


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("previous", [b"path,top1_label,top1_prob\nold.png,ant,1.0\n", None])
def test_sigkill_mid_run_leaves_the_old_output_or_none(single_label, tmp_path, previous):
    """``tresnet-ft predict`` killed after its first rows: the output is the previous file byte for
    byte (or absent), and the rows so far sit only in the hidden ``.partial``, which says what it is."""
    images = [write_image(tmp_path / "many" / f"{i:03d}.png", image)
              for i, image in enumerate(distinct_images(8, height=16, width=16) * 40)]
    output = tmp_path / "out" / "predictions.csv"
    output.parent.mkdir()
    if previous is not None:
        output.write_bytes(previous)
    process = start_command(["predict", str(single_label), str(tmp_path / "many"), "-o", str(output),
                             "--batch-size", "1", "--top-k", "1"], cwd=tmp_path)
    partial, deadline = partial_path(output), time.monotonic() + 300
    try:
        while not (partial.exists() and len(partial.read_bytes().splitlines()) >= 3):  # header + 2 rows
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no rows were written in time"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        stderr = process.communicate()[1]
    assert process.returncode == -signal.SIGKILL, stderr[-3000:]
    if previous is None:
        assert not output.exists(), stderr[-3000:]
    else:
        assert output.read_bytes() == previous, stderr[-3000:]
    # The only other file is the hidden, clearly named partial, and it is visibly short.
    assert {p.name for p in output.parent.iterdir()} - {output.name} == {".predictions.csv.partial"}
    assert 3 <= len(partial.read_bytes().splitlines()) < len(images) + 1
