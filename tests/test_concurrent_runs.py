"""Runs started together get a folder each: a new run claims ``<root>/<recipe>/version_<N>`` by
creating it (``training/runs.py: claim_run_folder``), and the DDP workers of one run reuse the
folder its first process claimed (``new_run_folder``)."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests.run_helpers import error_line, start_command
from tresnet_ft.cli.command import training_args
from tresnet_ft.training import loggers, runs
from tresnet_ft.training.runs import RUN_FOLDER_VARIABLE, RunFolder, claim_run_folder, new_run_folder, starts_the_run

QUICK = ["fit", "--recipe", "quickstart", "--logger", "csv", "--data.dataset_options", '{"num_images": 8}']


def _versions(root: Path, name: str = "quickstart") -> list[str]:
    return sorted(p.name for p in (root / name).iterdir()) if (root / name).exists() else []


def test_threads_claiming_at_once_get_one_folder_each(tmp_path, monkeypatch):
    # Every thread looks for the next free number before any of them creates a folder: the race
    # two runs started together have. Only the creation may decide.
    count = 8
    everyone_looked = threading.Barrier(count)
    look = runs.next_version

    def look_then_wait(runs_dir, run_name):
        version = look(runs_dir, run_name)
        everyone_looked.wait(timeout=30)
        return version

    monkeypatch.setattr(runs, "next_version", look_then_wait)
    claimed: list[RunFolder] = []
    threads = [threading.Thread(target=lambda: claimed.append(claim_run_folder(tmp_path, "quickstart")))
               for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(run.version for run in claimed) == list(range(count))
    assert all(run.path.is_dir() and run.save_dir == tmp_path for run in claimed)
    assert _versions(tmp_path) == sorted(f"version_{n}" for n in range(count))


def test_a_claim_skips_any_name_in_use_and_keeps_what_is_there(tmp_path):
    (tmp_path / "quickstart").mkdir()
    (tmp_path / "quickstart" / "version_0").write_text("a file, not a run")
    (tmp_path / "quickstart" / "version_3").mkdir()
    assert claim_run_folder(tmp_path, "quickstart") == RunFolder(tmp_path, "quickstart", 4)
    assert (tmp_path / "quickstart" / "version_0").read_text() == "a file, not a run"
    assert claim_run_folder(tmp_path / "new" / "root", "other").path.is_dir()  # parents made as needed


@pytest.mark.parametrize("environ, first", [
    ({}, True),
    ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, True),  # Lightning's launcher, in the main process
    ({"RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"}, True),  # torchrun, rank 0
    ({"LOCAL_RANK": "1", "NODE_RANK": "0"}, False),  # a worker Lightning started
    ({"NODE_RANK": "1"}, False),  # the main process of the second node
    ({"RANK": "3", "LOCAL_RANK": "1"}, False),  # torchrun
    ({"SLURM_PROCID": "2"}, False),
])
def test_only_the_first_process_of_a_run_starts_it(environ, first):
    assert starts_the_run(environ) is first


def test_the_workers_of_a_run_reuse_its_folder_and_claim_none(tmp_path):
    main: dict[str, str] = {}
    run = new_run_folder(tmp_path, "quickstart", main)
    assert run == RunFolder(tmp_path, "quickstart", 0) and main[RUN_FOLDER_VARIABLE] == str(run.path)
    # Lightning starts each worker with a copy of the main process's environment and LOCAL_RANK.
    worker = {**main, "LOCAL_RANK": "1", "NODE_RANK": "0"}
    assert new_run_folder(tmp_path, "quickstart", worker) == run
    # A process of another launcher (the variable is not there) names a folder and creates nothing.
    assert new_run_folder(tmp_path, "quickstart", {"NODE_RANK": "1"}).version == 1
    # A variable left over from a run of another recipe is not this run's folder.
    assert new_run_folder(tmp_path, "other", worker) == RunFolder(tmp_path, "other", 0)
    assert _versions(tmp_path) == ["version_0"] and not (tmp_path / "other").exists()


def test_help_and_print_config_claim_nothing(tmp_path):
    environ: dict[str, str] = {}
    assert new_run_folder(tmp_path, "quickstart", environ, claim=False).version == 0
    assert environ == {} and not (tmp_path / "quickstart").exists()


# -- through training_args ---------------------------------------------------------------------------


@pytest.fixture
def default_runs(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loggers, "RUNS_DIR", tmp_path / "runs")
    for name in (RUN_FOLDER_VARIABLE, *runs.RANK_VARIABLES):
        monkeypatch.setenv(name, "")  # so that what the test (or training_args) sets is undone after it
        monkeypatch.delenv(name)
    return tmp_path / "runs"


def _logger_versions(args: list[str]) -> set[int]:
    return {e["init_args"]["version"] for e in json.loads(args[args.index("--trainer.logger") + 1])}


def test_each_command_claims_its_folder_and_a_ddp_worker_takes_it(default_runs, monkeypatch):
    assert _logger_versions(training_args(QUICK)[0]) == {0}
    assert _logger_versions(training_args(QUICK)[0]) == {1}  # the first is taken, though still empty
    assert _versions(default_runs) == ["version_0", "version_1"]
    # The worker of the second run, started by Lightning's launcher with a copy of this environment.
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert _logger_versions(training_args(QUICK)[0]) == {1}
    assert _versions(default_runs) == ["version_0", "version_1"]


def test_a_run_that_fails_gives_back_only_the_folder_it_claimed(default_runs, monkeypatch, caplog):
    error_line(caplog, [*QUICK, "--model.lr", "-1"])
    assert not default_runs.exists()  # claimed, still empty: removed, with the folders made for it
    (default_runs / "quickstart" / "version_4").mkdir(parents=True)
    (default_runs / "quickstart" / "version_4" / "metrics.csv").write_text("step\n")
    error_line(caplog, [*QUICK, "--model.lr", "-1"])
    assert _versions(default_runs) == ["version_4"]  # only what the failed start made is removed
    assert _logger_versions(training_args(QUICK)[0]) == {5}  # a run's first process claims version_5, shares it
    monkeypatch.setenv("LOCAL_RANK", "1")
    error_line(caplog, [*QUICK, "--model.lr", "-1"])  # a worker of it fails before anything is written
    assert _versions(default_runs) == ["version_4", "version_5"]  # the first process's: not the worker's to remove


def test_the_python_api_gives_back_the_folder_of_a_run_that_fails(default_runs):
    import tresnet_ft

    with pytest.raises(ValueError, match="Expected lr to be a number > 0"):
        tresnet_ft.fit(recipe="quickstart", logger="csv", model={"lr": -1.0}, data={"dataset_options": {"num_images": 8}})
    assert not default_runs.exists()  # as after the same mistake on the command line


def test_print_config_claims_no_folder(default_runs, capsys):
    args, _ = training_args([*QUICK, "--print_config"])
    assert _logger_versions(args) == {0} and not default_runs.exists()


# -- real runs -------------------------------------------------------------------------------------

TINY = [*QUICK, "--data.image_size", "32", "--data.batch_size", "4", "--trainer.max_epochs", "1",
        "--model.plots", "false", "--model.optimizer", "sgd", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false"]


@pytest.mark.slow
def test_two_runs_started_together_keep_their_own_checkpoints_and_metrics(tmp_path):
    # Same folder, same recipe, same moment: before, both took version_0 and one run's files were lost.
    procs = [start_command(TINY, tmp_path) for _ in range(2)]
    outputs = [proc.communicate(timeout=900) for proc in procs]
    for proc, (_, stderr) in zip(procs, outputs):
        assert proc.returncode == 0, stderr[-3000:]
    root = tmp_path / "runs" / "quickstart"
    assert _versions(tmp_path / "runs") == ["version_0", "version_1"]
    reported = sorted(line.split("Run folder: ", 1)[1].strip() for _, stderr in outputs
                      for line in stderr.splitlines() if "Run folder: " in line)
    assert reported == [str(root / "version_0"), str(root / "version_1")]  # each run names its own
    for run in ("version_0", "version_1"):
        assert {"best.ckpt", "last.ckpt"} <= {p.name for p in (root / run / "checkpoints").iterdir()}
        assert (root / run / "metrics.csv").read_text().count("\n") >= 2  # the header and a row
