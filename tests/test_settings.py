"""The module's numeric settings are checked when the module is built, before anything trains:
each value outside its range is one ``InvalidValueError`` line saying what was expected, what
arrived and which flag fixes it (``tresnet_ft/training/optim.py: SETTING_RANGES``)."""
from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest

from tests.run_helpers import error_line
from tresnet_ft import TResNetClassifier
from tresnet_ft.errors import InvalidValueError
from tresnet_ft.training import loggers
from tresnet_ft.training.optim import SETTING_RANGES, check_settings

# (setting, a value just outside its range, the range as the message states it)
OUT_OF_RANGE = [
    ("lr", 0.0, "> 0"), ("lr", -1.0, "> 0"), ("lr", math.nan, "> 0"), ("lr", math.inf, "> 0"),
    ("weight_decay", -1e-4, ">= 0"),
    ("momentum", 1.0, "in [0, 1)"), ("momentum", -0.1, "in [0, 1)"),
    ("warmup_epochs", -1.0, ">= 0"),
    ("pct_start", 0.0, "in (0, 1)"), ("pct_start", 1.0, "in (0, 1)"),
    ("label_smoothing", 1.0, "in [0, 1)"), ("label_smoothing", -0.1, "in [0, 1)"),
    ("ema_decay", 0.0, "in (0, 1)"), ("ema_decay", 1.0, "in (0, 1)"),
    ("drop_rate", 1.0, "in [0, 1)"), ("drop_path_rate", -0.1, "in [0, 1)"),
    ("backbone_lr_mult", -0.1, ">= 0"),
    ("layer_decay", 0.0, "in (0, 1]"), ("layer_decay", 1.5, "in (0, 1]"),
    ("freeze_epochs", -1, ">= 0"),
    ("asl_gamma_neg", -1.0, ">= 0"), ("asl_gamma_pos", -0.5, ">= 0"),
    ("asl_clip", 1.0, "in [0, 1)"), ("asl_clip", -0.01, "in [0, 1)"),
]
# The edge of every range that is still valid, and None where it turns the feature off.
AT_THE_EDGE = dict(lr=1e30, weight_decay=0.0, momentum=0.0, warmup_epochs=0.0, pct_start=0.999,
                   label_smoothing=0.0, ema_decay=None, drop_rate=0.0, drop_path_rate=0.0, backbone_lr_mult=0.0,
                   layer_decay=1.0, freeze_epochs=0, asl_gamma_neg=0.0, asl_gamma_pos=0.0, asl_clip=0.0)


def test_every_range_names_a_module_setting_and_the_table_covers_the_brief():
    parameters = inspect.signature(TResNetClassifier.__init__).parameters
    assert set(SETTING_RANGES) <= set(parameters)
    assert set(SETTING_RANGES) == set(AT_THE_EDGE) == {name for name, _, _ in OUT_OF_RANGE}


@pytest.mark.parametrize("name, value, expected", OUT_OF_RANGE)
def test_a_setting_out_of_range_is_refused_when_the_module_is_built(name, value, expected):
    with pytest.raises(InvalidValueError) as raised:
        TResNetClassifier(arch="tresnet_m", **{name: value})
    message = str(raised.value)
    assert message.startswith(f"Expected {name} to be a number {expected}, but got {value!r}. ")
    assert f"Fix: --model.{name} {SETTING_RANGES[name].usual}." in message and "\n" not in message


def test_values_at_the_edge_of_every_range_build():
    check_settings(AT_THE_EDGE)  # raises on the first refused value
    check_settings({"ema_decay": 0.9997, "layer_decay": None})
    model = TResNetClassifier(arch="tresnet_m", num_classes=2, **AT_THE_EDGE)
    assert {name: model.hparams[name] for name in AT_THE_EDGE} == AT_THE_EDGE


@pytest.mark.parametrize("value", ["fast", True, None, [0.1]])
def test_a_value_that_is_not_a_number_is_refused(value):
    # From Python nothing checks the type first: a string or a bool would reach the optimizer.
    with pytest.raises(InvalidValueError) as raised:
        check_settings({"lr": value})
    assert str(raised.value) == f"Expected lr to be a number > 0, but got {value!r}. Fix: --model.lr 1e-3."


def test_the_message_says_how_to_turn_an_optional_feature_off():
    with pytest.raises(InvalidValueError, match=r"Fix: --model\.ema_decay 0\.9997, or null for no EMA\.$"):
        check_settings({"ema_decay": 1.0})


# -- through the command line ---------------------------------------------------------------------

TINY = ["--data.image_size", "32", "--data.batch_size", "4", "--data.dataset_options", '{"num_images": 8}',
        "--trainer.max_epochs", "1", "--model.plots", "false", "--logger", "csv"]


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loggers, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "runs"


@pytest.mark.parametrize("flag, value, expected", [
    ("--model.lr", "-1", "Expected lr to be a number > 0, but got -1.0. Fix: --model.lr 1e-3."),
    ("--model.momentum", "1", "Expected momentum to be a number in [0, 1), but got 1.0. Fix: --model.momentum 0.9."),
    ("--model.ema_decay", "1.5", "Expected ema_decay to be a number in (0, 1), but got 1.5."),
])
def test_a_bad_setting_on_the_command_line_is_one_line_and_nothing_runs(runs, caplog, flag, value, expected):
    message = error_line(caplog, ["fit", "--recipe", "quickstart", *TINY, flag, value])
    assert message == f"error: {expected}" or message.startswith(f"error: {expected} Fix:")
    assert not any("Epoch" in record.getMessage() for record in caplog.records)
    # The run folder claimed for it (and runs/ above it, made for it) is given back: a failed start leaves none.
    assert not runs.exists()
