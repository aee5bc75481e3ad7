"""The notebooks: stored without outputs, and run top to bottom in a fresh kernel in smoke mode.

Smoke mode (``TRESNET_FT_SMOKE=1``) writes the generated quickstart shapes in the user formats,
trains from random weights for a few steps and, at the end, writes ``notebook_summary.json`` in
the kernel's working folder; the tests check what each step produced.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

from tresnet_ft.classifier.checkpoint import load_classifier
from tresnet_ft.data.quickstart import SHAPES

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
SHAPE_NAMES = sorted(SHAPES)


def test_both_notebooks_are_present():
    assert [path.name for path in NOTEBOOKS] == [
        "01_transfer_learning.ipynb",
        "02_multilabel_tagging.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebooks_are_stored_valid_and_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert "TRESNET_FT_SMOKE" in "".join(cell.source for cell in code)


def execute(name: str, folder: Path) -> tuple[nbformat.NotebookNode, dict]:
    """Run notebook ``name`` in a fresh kernel with ``folder`` as its working folder.

    Returns the executed notebook and its summary, with the paths in the prediction rows made
    absolute (the notebook writes them relative to its working folder).
    """
    from nbclient import NotebookClient

    notebook = nbformat.read(REPO / "notebooks" / name, as_version=4)
    with pytest.MonkeyPatch.context() as mp:  # the kernel process inherits this environment
        mp.setenv("TRESNET_FT_SMOKE", "1")
        mp.setenv("MPLBACKEND", "Agg")
        # the code under test, wherever the kernel's working folder is
        mp.setenv(
            "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        )
        client = NotebookClient(
            notebook,
            timeout=600,
            kernel_name="python3",
            resources={"metadata": {"path": str(folder)}},
        )
        client.execute()  # raises CellExecutionError, with the traceback, if a cell fails
    summary = json.loads((folder / "notebook_summary.json").read_text())
    for row in summary.get("predictions", []) + summary.get("tagged", []):
        row["path"] = str((folder / row["path"]).resolve())
    return notebook, summary


@pytest.fixture(scope="module")
def transfer(tmp_path_factory):
    return execute("01_transfer_learning.ipynb", tmp_path_factory.mktemp("nb01"))


@pytest.fixture(scope="module")
def tagging(tmp_path_factory):
    return execute("02_multilabel_tagging.ipynb", tmp_path_factory.mktemp("nb02"))


def check_ran_here(notebook: nbformat.NotebookNode, summary: dict) -> None:
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code)
    assert not any(output.output_type == "error" for cell in code for output in cell.outputs)
    assert summary["python_prefix"] == sys.prefix  # the kernel is this environment's Python
    assert Path(summary["package"]).resolve().is_relative_to(REPO)  # and imports this checkout


# -- 01: transfer learning ------------------------------------------------------------------------


@pytest.mark.slow
def test_transfer_notebook_runs_in_this_environment(transfer):
    notebook, summary = transfer
    check_ran_here(notebook, summary)
    assert summary["classes"] == SHAPE_NAMES
    shown = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "display_data" and "image/png" in output.get("data", {})
    ]
    assert len(shown) >= 6  # batch, LR sweep, curves, confusions, worst predictions, predictions


@pytest.mark.slow
def test_transfer_notebook_finds_a_learning_rate_and_trains_with_it(transfer):
    _, summary = transfer
    assert summary["lr_suggestion"] is not None
    assert 1e-6 <= summary["lr_suggestion"] <= 1e-2  # inside the swept range
    assert summary["lr_used"] == summary["lr_suggestion"]
    assert 0.0 <= summary["val_top1"] <= 1.0
    best = load_classifier(summary["best_checkpoint"])
    assert best.info.classes == SHAPE_NAMES and best.info.image_size == 64


@pytest.mark.slow
def test_transfer_notebook_draws_the_plots(transfer):
    _, summary = transfer
    assert summary["run_plots"] == ["confusion_matrix.png", "curves.png", "worst_predictions.png"]
    assert summary["notebook_plots"] == ["lr_find.png", "predictions.png", "train_batch.png"]


@pytest.mark.slow
def test_transfer_notebook_predicts_every_new_file_then_exports(transfer):
    _, summary = transfer
    rows = summary["predictions"]
    assert len(summary["new_images"]) == 5
    assert sorted(row["path"] for row in rows) == sorted(summary["new_images"])
    for row in rows:
        labels = [row[f"top{k}_label"] for k in (1, 2, 3)]
        probabilities = [float(row[f"top{k}_prob"]) for k in (1, 2, 3)]
        assert set(labels) <= set(SHAPE_NAMES) and len(set(labels)) == 3
        assert (
            probabilities == sorted(probabilities, reverse=True)
            and 0 < sum(probabilities) <= 1 + 1e-5
        )
    export = summary["export"]
    assert export["checked_with"] == "onnxruntime" and export["max_abs_diff"] < 1e-3
    assert Path(export["path"]).stat().st_size > 1_000_000
    sidecar = json.loads(Path(export["path"] + ".json").read_text())
    assert sidecar["classes"] == SHAPE_NAMES


# -- 02: multi-label tagging ----------------------------------------------------------------------


@pytest.mark.slow
def test_tagging_notebook_runs_in_this_environment(tagging):
    notebook, summary = tagging
    check_ran_here(notebook, summary)
    assert summary["task"] == "multi_label" and summary["classes"] == SHAPE_NAMES


@pytest.mark.slow
def test_tagging_notebook_reports_map_and_tunes_thresholds(tagging):
    _, summary = tagging
    assert 0.0 <= summary["val_map"] <= 1.0
    f1 = summary["f1"]
    assert 0.0 <= f1["default"] <= f1["global"] <= f1["per_class"] <= 1.0  # what tuning guarantees
    thresholds = summary["per_class_thresholds"]
    assert len(thresholds) == 5 and all(0.0 <= t <= 1.0 for t in thresholds)
    assert {"curves.png", "per_class_ap.png", "precision_recall.png"} <= set(summary["run_plots"])
    assert summary["notebook_plots"] == ["tagged.png", "thresholds.png"]


@pytest.mark.slow
def test_tagging_notebook_tags_new_images_above_the_checkpoint_thresholds(tagging):
    _, summary = tagging
    rows = summary["tagged"]
    assert sorted(row["path"] for row in rows) == sorted(summary["new_images"])
    assert len(rows) == 4
    thresholds = load_classifier(summary["best_checkpoint"]).info.decision_thresholds()
    for row in rows:
        tags = row["tags"].split(";") if row["tags"] else []
        scores = [float(s) for s in row["scores"].split(";")] if row["scores"] else []
        assert len(tags) == len(scores) and set(tags) <= set(SHAPE_NAMES)
        assert scores == sorted(scores, reverse=True)
        for tag, score in zip(tags, scores):
            assert (
                score > thresholds[SHAPE_NAMES.index(tag)].item() - 1e-6
            )  # rows are rounded to 6 places


@pytest.mark.slow
def test_tagging_notebook_reloads_the_same_model(tagging):
    _, summary = tagging
    assert summary["reload_max_abs_diff"] < 1e-5
    assert summary["thresholds_kept"] is True


def test_tagging_notebook_saves_in_the_hub_layout_and_loads_it_back(tagging):
    _, summary = tagging
    assert {"config.json", "model.safetensors", "tresnet_ft.json", "README.md",
            "plots/per_class_ap.png"} <= set(summary["hub_files"])
    assert summary["hub_max_abs_diff"] < 1e-4
    assert summary["hub_thresholds_kept"] is True
