"""Where runs go: ``--trainer.default_root_dir DIR`` (flag, ``--config`` file, recipe or
``tresnet_ft.fit(trainer=...)``) holds ``DIR/<recipe>/version_<N>/`` and is where ``--ckpt_path
last|best`` looks; without it, ``./runs`` (or ``$TRESNET_FT_RUNS``). A plain ``pl.Trainer`` with
``default_root_dir`` needs nothing of ours."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from tests.run_helpers import REPO, error_line
from tests.test_module import tiny_data
from tests.test_resume import FIT, STEPS_PER_EPOCH
from tresnet_ft import TResNetClassifier
from tresnet_ft.cli.api import fit
from tresnet_ft.cli.command import main, training_args
from tresnet_ft.training import loggers

QUICK = ["fit", "--recipe", "quickstart", "--logger", "csv", "--data.dataset_options", '{"num_images": 8}']


@pytest.fixture
def default_runs(tmp_path, monkeypatch):
    """The default runs folder, ``tmp_path/default_runs``, as $TRESNET_FT_RUNS would set it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loggers, "RUNS_DIR", tmp_path / "default_runs")
    return tmp_path / "default_runs"


def _logger_dirs(args: list[str]) -> set[tuple[str, str, int]]:
    entries = json.loads(args[args.index("--trainer.logger") + 1])
    return {(e["init_args"]["save_dir"], e["init_args"]["name"], e["init_args"]["version"]) for e in entries}


def test_runs_root_is_default_root_dir_and_the_default_follows_the_runs_setting(default_runs, tmp_path):
    assert loggers.runs_root(tmp_path / "exp") == tmp_path / "exp"
    assert loggers.runs_root("exp/a") == Path("exp/a")
    for default in (None, "runs", "./runs", Path("runs")):
        assert loggers.runs_root(default) == default_runs


def test_tresnet_ft_runs_moves_the_default_only(tmp_path):
    code = ("from tresnet_ft.training.loggers import runs_root; "
            "print(runs_root(None), runs_root('runs'), runs_root('e'))")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TRESNET_FT_RUNS": str(tmp_path / "elsewhere")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [str(tmp_path / "elsewhere")] * 2 + ["e"]
    env.pop("TRESNET_FT_RUNS")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["runs", "runs", "e"]


def _recipe_file(tmp_path: Path, root: Path) -> Path:
    path = tmp_path / "mine.yaml"
    path.write_text(f"base: quickstart\ntrainer:\n  default_root_dir: {root}\n")
    return path


@pytest.mark.parametrize("how", ["flag", "flag=", "config file", "config string", "section", "recipe", "api"])
def test_default_root_dir_decides_where_loggers_write(default_runs, tmp_path, how):
    root = tmp_path / "exp"
    (tmp_path / "more.yaml").write_text(f"trainer:\n  default_root_dir: {root}\n  max_epochs: 1\n")
    (tmp_path / "trainer.yaml").write_text(f"default_root_dir: {root}\nmax_epochs: 1\n")  # one section
    from tresnet_ft.cli.api import override_args

    argv = {
        "flag": [*QUICK, "--trainer.default_root_dir", str(root)],
        "flag=": [*QUICK, f"--trainer.default_root_dir={root}"],
        "config file": [*QUICK, "--config", str(tmp_path / "more.yaml")],
        "config string": [*QUICK, "--config", json.dumps({"trainer": {"default_root_dir": str(root)}})],
        "section": [*QUICK, "--trainer", str(tmp_path / "trainer.yaml")],
        "recipe": ["fit", "--recipe", str(_recipe_file(tmp_path, root)), *QUICK[3:]],
        "api": [*QUICK, *override_args({"trainer": {"default_root_dir": root}})],  # a Path, as a notebook passes it
    }[how]
    args, name = training_args(argv)
    assert _logger_dirs(args) == {(str(root), name, 0)}
    assert args[-1] == f"--trainer.default_root_dir={root}"  # the Trainer agrees with the loggers


def test_without_default_root_dir_runs_go_to_the_default(default_runs):
    args, _ = training_args(QUICK)
    assert _logger_dirs(args) == {(str(default_runs), "quickstart", 0)}
    assert args[-1] == f"--trainer.default_root_dir={default_runs}"  # the recipe's "runs", moved
    assert (default_runs / "quickstart" / "version_0").is_dir()  # claimed: the next run cannot take it
    assert _logger_dirs(training_args(QUICK)[0]) == {(str(default_runs), "quickstart", 1)}


def _fake_run(root: Path, version: int, *names: str) -> Path:
    folder = root / "quickstart" / f"version_{version}"
    (folder / "checkpoints").mkdir(parents=True)
    for name in names:
        (folder / "checkpoints" / f"{name}.ckpt").write_bytes(b"not read here")
    return folder


def test_ckpt_path_aliases_look_under_default_root_dir_and_say_which_run(default_runs, tmp_path, caplog):
    root = tmp_path / "exp"
    _fake_run(default_runs, 7, "last", "best")  # newer, but in the other runs folder
    _fake_run(root, 0, "last", "best")
    newest = _fake_run(root, 1, "last")
    caplog.set_level(logging.INFO, logger="tresnet_ft")
    args, _ = training_args([*QUICK, "--ckpt_path", "last", "--trainer.default_root_dir", str(root)])
    assert args[args.index("--ckpt_path") + 1] == str(newest / "checkpoints" / "last.ckpt")
    assert _logger_dirs(args) == {(str(root.resolve()), "quickstart", 1)}  # continues that run's folder
    assert (f"Resuming run {newest.resolve()} from {newest / 'checkpoints' / 'last.ckpt'} (--ckpt_path last: "
            f"the newest run of 'quickstart' under {root} with a last.ckpt)") in caplog.text
    caplog.clear()
    args, _ = training_args(["validate", *QUICK[1:], "--ckpt_path", "best", "--trainer.default_root_dir", str(root)])
    best = root / "quickstart" / "version_0" / "checkpoints" / "best.ckpt"
    assert args[args.index("--ckpt_path") + 1] == str(best)
    assert f"Checkpoint: {best} (--ckpt_path best: the newest run of 'quickstart'" in caplog.text
    assert _logger_dirs(args) == {(str(root), "quickstart", 2)}  # validate writes a new run folder


def test_ckpt_path_last_with_no_run_under_default_root_dir_names_that_folder(default_runs, tmp_path, caplog):
    _fake_run(default_runs, 0, "last")
    message = error_line(caplog, [*QUICK, "--ckpt_path", "last", "--trainer.default_root_dir", str(tmp_path / "exp")])
    where = tmp_path / "exp" / "quickstart" / "version_*" / "checkpoints" / "last.ckpt"
    assert f"no last.ckpt found at {where}" in message
    assert "--trainer.default_root_dir" in message  # the fix names it


def test_fit_help_mentions_default_root_dir(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        main(["fit", "--recipe", "quickstart", "--help"])
    head = capsys.readouterr().out.split("\noptions:")[0]  # ours, before LightningCLI's list
    assert "--trainer.default_root_dir DIR" in head and "DIR/<recipe>/version_<N>/" in head


# -- real runs -----------------------------------------------------------------------------------


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_fit_validate_test_and_resume_all_use_default_root_dir(default_runs, tmp_path, caplog):
    root = tmp_path / "exp"
    tiny = [*FIT[1:], "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(root)]
    assert main(["fit", *tiny, "--model.plots", "true"]) == 0
    run = root / "quickstart" / "version_0"
    assert {"checkpoints/best.ckpt", "checkpoints/last.ckpt", "metrics.csv", "config.yaml",
            "plots/curves.png"} <= _files(run)
    assert main(["validate", *tiny, "--ckpt_path", "best"]) == 0
    assert main(["test", *tiny, "--ckpt_path", "best", "--model.plots", "true"]) == 0
    assert "plots/test/confusion_matrix.png" in _files(root / "quickstart" / "version_2")
    caplog.clear()
    caplog.set_level(logging.INFO, logger="tresnet_ft")
    assert main(["fit", *tiny, "--trainer.max_epochs", "2", "--ckpt_path", "last"]) == 0
    assert f"Resuming run {run.resolve()}" in caplog.text
    resumed = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 2 * STEPS_PER_EPOCH  # the second epoch ran, in the same folder
    assert sorted(p.name for p in (root / "quickstart").iterdir()) == ["version_0", "version_1", "version_2"]
    assert not default_runs.exists() and not (tmp_path / "runs").exists()  # nothing went anywhere else


@pytest.mark.slow
def test_fit_without_default_root_dir_writes_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loggers, "RUNS_DIR", Path("runs"))  # what an unset $TRESNET_FT_RUNS gives
    assert main([*FIT, "--trainer.max_epochs", "1"]) == 0
    assert {"checkpoints/best.ckpt", "checkpoints/last.ckpt", "metrics.csv"} <= _files(
        tmp_path / "runs" / "quickstart" / "version_0")


@pytest.mark.slow
def test_the_python_api_takes_default_root_dir(default_runs, tmp_path):
    root = tmp_path / "from notebook"
    _, best = fit(recipe="quickstart", logger="csv", trainer={"max_epochs": 1, "default_root_dir": root},
                  data={"image_size": 32, "batch_size": 4, "dataset_options": {"num_images": 8}},
                  model={"plots": False, "optimizer": "sgd"})
    assert Path(best) == root / "quickstart" / "version_0" / "checkpoints" / "best.ckpt" and Path(best).is_file()
    assert not default_runs.exists()


@pytest.mark.slow
@pytest.mark.parametrize("logger", [True, False])
def test_a_plain_trainer_puts_checkpoints_and_plots_under_its_default_root_dir(tmp_path, logger):
    pl.seed_everything(0)
    data = tiny_data(num_images=8)
    model = TResNetClassifier.from_datamodule(data, arch="tresnet_m", pretrained=None)
    trainer = pl.Trainer(default_root_dir=tmp_path / "plain", logger=logger, accelerator="cpu", max_epochs=1,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data)
    # Lightning's own layout: a logger's folder (lightning_logs/version_0), or the root itself.
    run = tmp_path / "plain" / "lightning_logs" / "version_0" if logger else tmp_path / "plain"
    assert {"checkpoints/best.ckpt", "checkpoints/last.ckpt", "plots/curves.png"} <= _files(run)
    assert _files(tmp_path) == {f"plain/{name}" for name in _files(tmp_path / "plain")}  # nothing elsewhere
