"""The tresnet-ft command: recipes, tools, and one-line errors for user mistakes."""
import subprocess
import sys

import pytest

from tresnet_ft.cli.command import main, training_args
from tresnet_ft.cli.lightning_cli import run_cli
from tresnet_ft.cli.recipe import available_recipes, load_recipe


def test_smoke_run_trains_and_fuses(caplog):
    caplog.set_level("INFO")
    assert main(["smoke", "--steps", "2", "--batch", "2", "--size", "64"]) == 0
    assert "step 2/2" in caplog.text and "fused vs unfused" in caplog.text


def _run(*args):
    return subprocess.run([sys.executable, "-m", "tresnet_ft.cli.command", *args], capture_output=True, text=True,
                          env={"COLUMNS": "200", "PATH": "", "HF_HUB_OFFLINE": "1"})


def test_models_and_recipes_tables():
    models = _run("models")
    assert models.returncode == 0 and "tresnet_v2_l.miil_in21k" in models.stdout and "11221" in models.stdout
    recipes = _run("recipes")
    assert recipes.returncode == 0
    for name in available_recipes():
        assert name in recipes.stdout


def test_bad_size_is_one_clear_line_not_a_traceback():
    proc = _run("smoke", "--size", "102")
    assert proc.returncode == 2
    assert "multiples of 4 and at least 32" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_recipe_lists_the_valid_ones():
    proc = _run("fit", "--recipe", "imagenet")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Unknown recipe 'imagenet'" in proc.stderr and "quickstart" in proc.stderr


def test_unknown_config_key_is_named(tmp_path):
    proc = _run("fit", "--recipe", "quickstart", "--model.learning_rate", "0.1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "usage:" not in proc.stderr  # one line, not a page of usage
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: unrecognized arguments: --model.learning_rate 0.1 (tresnet-ft fit --help lists the options)")


def test_missing_data_folder_is_one_line(tmp_path):
    proc = _run("fit", "--recipe", "folder", "--data.root", str(tmp_path / "nowhere"), "--model.pretrained", "null")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "nowhere" in proc.stderr


def test_recipes_merge_their_base():
    recipe = load_recipe("quickstart")
    assert recipe.config["model"]["pretrained"] is None  # its own value
    assert recipe.config["model"]["optimizer"] == "adamw"  # from _base
    assert "base" not in recipe.config and recipe.description


@pytest.mark.parametrize("name", available_recipes())
def test_every_recipe_parses_and_builds(tmp_path, name, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args, _ = training_args(["fit", "--recipe", name, "--logger", "csv", "--model.pretrained", "null",
                             "--data.dataset", "quickstart_multilabel" if name == "multilabel" else "quickstart",
                             "--data.root", "null",
                             "--data.dataset_options", '{"num_images": 8}', "--trainer.max_epochs", "1"])
    cli = run_cli(args, name, run=False)
    recipe = load_recipe(name).config
    assert cli.model.hparams.arch == recipe["model"]["arch"]
    assert cli.model.hparams.num_classes == 5  # linked from the data
    assert cli.datamodule.transform_config.image_size == recipe["data"]["image_size"]
    # linked once, from the data's value object, and kept as plain values for weights_only checkpoints
    assert cli.model.preprocessing == cli.datamodule.preprocessing
    assert cli.model.hparams.preprocessing == cli.datamodule.preprocessing.to_dict()
    assert cli.model.preprocessing.eval_crop == recipe["data"].get("eval_crop", "squish")


def test_progress_bar_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["fit", "--recipe", "quickstart", "--logger", "csv", "--data.dataset_options", '{"num_images": 8}']
    args, _ = training_args([*base, "--trainer.enable_progress_bar", "false"])
    assert run_cli(args, "quickstart", run=False).trainer.progress_bar_callback is None
    args, _ = training_args(base)
    bar = run_cli(args, "quickstart", run=False).trainer.progress_bar_callback
    assert type(bar).__name__ == "ThroughputProgressBar"


@pytest.mark.slow
def test_a_run_prints_each_line_once(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tresnet_ft.cli.command", "fit", "--recipe", "quickstart", "--logger", "csv",
         "--trainer.max_epochs", "1", "--data.image_size", "32", "--data.dataset_options", '{"num_images": 4}',
         "--trainer.enable_progress_bar", "false", "--model.plots", "false"],
        capture_output=True, text=True, cwd=tmp_path, check=False,
        env={"PATH": "", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr
    assert output.count("Run folder: runs/quickstart/version_0") == 1  # ours
    assert output.count("Seed set to 0") == 1  # Lightning's
    assert "args parameter is intended" not in output
    # Lightning's adverts, its note on our checkpoint callbacks and an internal deprecation: filtered
    assert "Tip:" not in output and "override existing callbacks" not in output and "LeafSpec" not in output
    # The compact model summary: parameters, no column of zero FLOPs, no note that it replaced Lightning's
    assert "Params: 29.4 M (0 frozen)" in output and "FLOPs" not in output  # TResNet-M, 5 classes
    assert "already configured with model summary" not in output


def test_turning_the_model_summary_off_works_with_the_compact_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["fit", "--recipe", "quickstart", "--logger", "csv", "--data.dataset_options", '{"num_images": 8}']

    def summaries(extra: list[str]) -> list[str]:
        args, _ = training_args([*base, *extra])
        return [type(cb).__name__ for cb in run_cli(args, "quickstart", run=False).trainer.callbacks
                if "Summary" in type(cb).__name__]

    assert summaries([]) == ["CompactModelSummary"]
    assert summaries(["--trainer.enable_model_summary", "false"]) == []
