"""The README's path on a tiny budget: fit -> validate -> predict -> export, through the command."""
import csv
import json

import cv2
import numpy as np
import onnxruntime
import pytest

from tresnet_ft.classifier.checkpoint import load_classifier
from tresnet_ft.cli.command import main
from tresnet_ft.inference.sidecar import sidecar_path

TINY = ["--trainer.max_epochs", "1", "--data.dataset_options", '{"num_images": 16}', "--logger", "csv"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        import tresnet_ft.training.loggers as loggers
        mp.setattr(loggers, "RUNS_DIR", root / "runs")
        assert main(["fit", "--recipe", "quickstart", *TINY]) == 0
    run = root / "runs" / "quickstart" / "version_0"
    return root, run


def test_fit_writes_checkpoints_metrics_and_plots(trained):
    _, run = trained
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert any(r.get("val/top1") for r in rows)
    for name in ("curves", "confusion_matrix", "worst_predictions"):
        image = cv2.imread(str(run / "plots" / f"{name}.png"))
        assert image is not None and image.shape[0] > 100


def test_validate_the_best_checkpoint(trained, monkeypatch):
    root, run = trained
    monkeypatch.chdir(root)
    assert main(["validate", "--recipe", "quickstart", *TINY, "--ckpt_path", str(run / "checkpoints" / "best.ckpt")]) == 0


def test_predict_then_export(trained, tmp_path):
    _, run = trained
    best = run / "checkpoints" / "best.ckpt"
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    (folder / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(best), str(folder), "-o", str(out), "--top-k", "2"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3 and {r["top1_label"] for r in rows} <= set(load_classifier(best).info.classes)

    model = tmp_path / "model.onnx"
    assert main(["export", str(best), "--format", "onnx", "-o", str(model)]) == 0
    sidecar = json.loads(sidecar_path(model).read_text())
    assert sidecar["classes"] == load_classifier(best).info.classes
    session = onnxruntime.InferenceSession(str(model))
    logits = session.run(None, {session.get_inputs()[0].name: np.zeros((3, 3, 64, 64), np.float32)})[0]
    assert logits.shape == (3, 5)
