"""What a new user meets in the first minutes with the tool commands: export works after the README's
install (and a missing package is one line naming the fix), predict and export end with sentences
rather than reprs, listings never cut the names users copy, smoke ends with PASS or FAIL, and the
notebooks say how to turn on smoke mode from Jupyter."""
from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import nbformat
import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.classifier_builders import single_label_checkpoint, write_photo_folder
from tresnet_ft.cli.command import main
from tresnet_ft.inference.export import export_model
from tresnet_ft.fetch.packages import MissingPackageError
from tresnet_ft.models import PRETRAINED
from tresnet_ft.cli.recipe import available_recipes, load_recipe
from tresnet_ft.cli.tools import print_listing

REPO = Path(__file__).resolve().parent.parent


def _messages(caplog, level=logging.INFO) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name.startswith("tresnet_ft") and record.levelno >= level]


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    """The command with stdout piped, in an 80-column environment."""
    return subprocess.run([sys.executable, "-m", "tresnet_ft.cli.command", *args], capture_output=True, text=True,
                          cwd=REPO, env={"COLUMNS": "80", "PATH": "", "HF_HUB_OFFLINE": "1"})


# --- export: the packages it needs --------------------------------------------------------------

def test_onnx_export_without_onnx_is_one_line_naming_the_pip_install(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    with pytest.raises(MissingPackageError, match=r"^ONNX export needs the onnx package, which is not "
                                                  r"installed\. Fix: pip install onnx$"):
        export_model(single_label_checkpoint(), "onnx", tmp_path / "model.onnx")
    caplog.set_level(logging.INFO)
    assert main(["export", str(single_label_checkpoint()), "-o", str(tmp_path / "model.onnx")]) == 2
    assert _messages(caplog, logging.ERROR) == [
        "error: ONNX export needs the onnx package, which is not installed. Fix: pip install onnx"]
    assert list(tmp_path.iterdir()) == []


def test_without_onnxruntime_the_export_is_kept_and_says_it_is_not_verified(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    caplog.set_level(logging.INFO)
    report = export_model(single_label_checkpoint(), "onnx", tmp_path / "model.onnx")
    assert report.path.is_file() and report.checked_with is None and report.max_abs_diff is None
    assert str(report).endswith("Not verified: onnxruntime is not installed (pip install onnxruntime).")
    warning, = _messages(caplog, logging.WARNING)
    assert "\n" not in warning and warning.endswith("Fix: pip install onnxruntime")


def _declared_for_readme_install() -> set[str]:
    """Canonical names of pyproject's core dependencies plus the extras that the README's first
    ``pip install -e TARGET`` names (``.`` or ``".[a,b]"``)."""
    target = re.search(r"pip install -e (\S+)", (REPO / "README.md").read_text()).group(1).strip("\"'")
    extras = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", target).group(1)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in (extras or "").split(","):
        requirements += project["optional-dependencies"][extra] if extra else []
    return {canonicalize_name(Requirement(text).name) for text in requirements}


def _installed_closure(names: set[str]) -> set[str]:
    """``names`` and everything their installed metadata requires in turn (markers evaluated, with
    the extras that were asked for)."""
    seen, todo = set(), [(name, frozenset()) for name in names]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            markers = [{"extra": extra} for extra in extras or [""]]
            if requirement.marker is None or any(requirement.marker.evaluate(env) for env in markers):
                todo.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return {name for name, _ in seen}


# Imported only because another test extra installed them: each importer works without them.
OPTIONAL_IMPORTS = {
    "dill": "torch.utils.data uses dill when it is installed (datasets brings it)",
    "trio": "httpcore2 loads its trio backend when trio is installed (selenium brings it)",
    "outcome": "a dependency of trio (selenium)",
    "sortedcontainers": "a dependency of trio (selenium)",
}

IMPORTED_BY_ONNX_EXPORT = """
import json, sys
before = set(sys.modules)
from tresnet_ft.inference.export import export_model
export_model(sys.argv[1], "onnx", sys.argv[2])
print(json.dumps(sorted({name.split(".")[0] for name in set(sys.modules) - before})))
"""


def test_every_package_the_onnx_export_imports_comes_with_the_readme_install(tmp_path):
    """A fresh interpreter exports to ONNX (with the check); every distribution it imported must be
    declared for the README's install command, or be required by one that is."""
    proc = subprocess.run([sys.executable, "-c", IMPORTED_BY_ONNX_EXPORT, str(single_label_checkpoint()),
                           str(tmp_path / "model.onnx")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    modules = json.loads(proc.stdout.splitlines()[-1])
    owners = metadata.packages_distributions()
    closure = _installed_closure(_declared_for_readme_install())
    imported = {module: {canonicalize_name(dist) for dist in owners.get(module, [])} for module in modules}
    assert {"onnx", "onnxruntime"} <= {dist for dists in imported.values() for dist in dists}
    undeclared = {module: dists for module, dists in imported.items()
                  if dists and "tresnet-ft" not in dists and not dists & closure and module not in OPTIONAL_IMPORTS}
    assert undeclared == {}, "imported by the ONNX export but not installed by the README's command"


# --- predict and export end with sentences --------------------------------------------------------

def test_export_and_predict_commands_end_with_sentences_not_reprs(tmp_path, caplog, jit_is_deprecated):
    caplog.set_level(logging.INFO)
    checkpoint, output = str(single_label_checkpoint()), tmp_path / "model.pt"
    assert main(["export", checkpoint, "--format", "torchscript", "-o", str(output)]) == 0
    last = _messages(caplog)[-1]
    assert last.startswith(f"Wrote {output} (TorchScript; input 'images' float32 [B, 3, 64, 64], "
                           "output 'logits') and model.pt.json (classes, preprocessing, thresholds) in ")
    assert re.search(r"Verified with torch\.jit\.load: the same logits as PyTorch at batch sizes 2 and 3 "
                     r"\(max abs difference \d\.\de-\d\d\)\.$", last)

    caplog.clear()
    readable, unreadable = write_photo_folder(tmp_path / "photos")
    csv = tmp_path / "predictions.csv"
    assert main(["predict", checkpoint, str(tmp_path / "photos"), "-o", str(csv)]) == 0
    messages = _messages(caplog)
    total = len(readable) + len(unreadable)
    assert re.fullmatch(rf"Wrote predictions for {len(readable)} of {total} image\(s\) to {re.escape(str(csv))} "
                        rf"in \d+\.\d s \(\d+\.\d images/s\); 2 unreadable file\(s\) were skipped\.", messages[-1])
    assert not any("Summary(" in message or "Report(" in message for message in messages)


@pytest.fixture
def jit_is_deprecated():
    """torch 2.13 deprecates TorchScript, which the torchscript export uses on purpose."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


# --- listings never cut what users copy -----------------------------------------------------------

def test_models_piped_at_80_columns_lists_every_name_and_hub_id_whole():
    proc = _run_cli("models")
    assert proc.returncode == 0 and "…" not in proc.stdout
    header, *rows = [line.split("\t") for line in proc.stdout.splitlines()]
    assert header == ["name", "hub id", "input", "classes", "ImageNet top-1"]
    assert [(row[0], row[1], row[3]) for row in rows] == [
        (name, cfg.hub_id, str(cfg.num_classes)) for name, cfg in PRETRAINED.items()]
    assert ["tresnet_m.miil_in21k_ft_in1k", "timm/tresnet_m.miil_in21k_ft_in1k"] in [row[:2] for row in rows]


def test_recipes_piped_at_80_columns_lists_every_recipe_whole():
    proc = _run_cli("recipes")
    assert proc.returncode == 0 and "…" not in proc.stdout
    header, *rows = [line.split("\t") for line in proc.stdout.splitlines()]
    assert header == ["recipe", "description", "reference result", "data from the Hugging Face hub"]
    expected = [(recipe.name, recipe.description, recipe.reference) for recipe in map(load_recipe, available_recipes())]
    assert [tuple(row[:3]) for row in rows] == expected
    hub = {row[0]: row[3] for row in rows}  # the hf arguments of the recipes with a hub copy, "-" for the others
    assert hub["cifar100"].startswith("--data.dataset hf --data.root uoft-cs/cifar100 ") and hub["folder"] == "-"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("columns", [60, 80, 200])
def test_models_in_a_terminal_of_any_width_keep_every_name_and_hub_id_on_one_line(columns, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(columns))
    terminal = _Terminal()
    rows = [(name, cfg.hub_id, "224") for name, cfg in PRETRAINED.items()]
    print_listing("weights", ("name", "hub id", "input"), rows, copyable=2, stream=terminal)
    lines = terminal.getvalue().splitlines()
    assert "…" not in terminal.getvalue()
    for name, hub_id, _ in rows:
        assert any(re.search(rf"(^|[\s│]){re.escape(name)}[\s│]", line) for line in lines), name
        assert any(re.search(rf"[\s│]{re.escape(hub_id)}[\s│]", line) for line in lines), hub_id
    is_table = "┃" in terminal.getvalue()
    assert is_table == (columns == 200)  # 60 and 80 are too narrow for whole ids in a table


# --- smoke: PASS or FAIL --------------------------------------------------------------------------

SMALL_SMOKE = ["smoke", "--steps", "2", "--batch", "2", "--size", "32"]


def test_smoke_ends_with_pass_and_what_it_checked(caplog):
    caplog.set_level(logging.INFO)
    assert main(SMALL_SMOKE) == 0
    assert re.fullmatch(r"PASS: tresnet_m trains \(2 steps on random 32 px images, loss \d\.\d{3} -> \d\.\d{3}, "
                        r"[\d.]+ img/s\) and its fused inference copy matches \(fused vs unfused max \|diff\| "
                        r"\d\.\de-\d\d\); [\d.]+ s in all\.", _messages(caplog)[-1])


def test_smoke_fails_when_fusing_changes_the_outputs(caplog, monkeypatch):
    import tresnet_ft.models

    class OffByOne(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images):
            return self.model(images) + 1.0

    monkeypatch.setattr(tresnet_ft.models, "fuse_for_inference", OffByOne)
    caplog.set_level(logging.INFO)
    assert main(["smoke", "--steps", "1", "--batch", "2", "--size", "32"]) == 1
    last = _messages(caplog)[-1]
    assert last.startswith("FAIL: the fused inference model differs from the trained one by up to 1 (allowed 0.001)")
    assert "TRESNET_FT_DEBUG=1 tresnet-ft smoke" in last and not any(m.startswith("PASS") for m in _messages(caplog))


def test_smoke_fails_when_the_loss_does_not_fall(caplog, monkeypatch):
    class NoUpdate(torch.optim.SGD):
        def step(self, closure=None):
            return None

    monkeypatch.setattr(torch.optim, "SGD", NoUpdate)
    caplog.set_level(logging.INFO)
    assert main(SMALL_SMOKE) == 1
    assert re.match(r"FAIL: the loss did not fall over 2 steps \((\S+) -> \1\)", _messages(caplog)[-1])


def test_smoke_fails_in_one_line_when_training_crashes(caplog, monkeypatch):
    import tresnet_ft.models

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device\nmore details")

    monkeypatch.setattr(tresnet_ft.models, "create_model", broken)
    monkeypatch.delenv("TRESNET_FT_DEBUG", raising=False)
    caplog.set_level(logging.INFO)
    assert main(SMALL_SMOKE) == 1
    assert _messages(caplog, logging.ERROR) == [
        "FAIL: tresnet_m did not run on this machine (RuntimeError: no kernel image is available for execution "
        "on the device). This is a broken install or a bug, not a setting: run TRESNET_FT_DEBUG=1 tresnet-ft "
        f"smoke and report its output with your torch version ({torch.__version__})."]


def test_smoke_refuses_zero_steps_in_one_line(caplog):
    assert main(["smoke", "--steps", "0"]) == 2
    assert _messages(caplog, logging.ERROR) == [
        "error: Expected --steps and --batch to be at least 1, but got 0 and 4."]


# --- notebooks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted((REPO / "notebooks").glob("*.ipynb")), ids=lambda path: path.stem)
def test_notebooks_say_how_to_turn_on_smoke_mode_in_jupyter_and_what_needs_network(path):
    notebook = nbformat.read(path, as_version=4)
    first_code = next(index for index, cell in enumerate(notebook.cells) if cell.cell_type == "code")
    before = "".join(cell.source for cell in notebook.cells[:first_code] if cell.cell_type == "markdown")
    assert "%env TRESNET_FT_SMOKE=1" in before and 'os.environ["TRESNET_FT_SMOKE"] = "1"' in before
    assert "network" in before and "pretrained weights" in before
    assert "TRESNET_FT_SMOKE" in notebook.cells[first_code].source  # the cell that reads it comes right after
