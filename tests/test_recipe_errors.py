"""YAML the command cannot read (a recipe, a ``--config`` file or string, a ``--SECTION`` file) is
one error line naming the file, the line, the column and the problem, with exit code 2. Tags that
would build Python objects (``!!python/...``) are refused and never run: every file is read with
``yaml.safe_load``, ours (``cli/recipe.py: parse_yaml``) and LightningCLI's alike."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.run_helpers import error_line
from tresnet_ft.cli.recipe import load_recipe, parse_yaml
from tresnet_ft.errors import InvalidValueError
from tresnet_ft.training import loggers

BAD_INDENT = "model:\n  lr: 0.1\n   weight_decay: 3\n"  # line 3 is one space deeper than line 2
INDENT_FIX = "Fix: line up the keys of each mapping at one indent, with spaces (no tabs)"
TAG_REFUSED = "is not allowed (settings are read as plain data: a tag that would build a Python object is never run)"


@pytest.fixture(autouse=True)
def runs_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loggers, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _making(marker: Path) -> str:
    """A YAML value that, if it were ever constructed, would create the folder ``marker``."""
    return f"!!python/object/apply:os.mkdir [{json.dumps(str(marker))}]"


def test_a_recipe_with_a_bad_indent_is_one_line_with_the_line_and_column(tmp_path, caplog):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("base: quickstart\n" + BAD_INDENT)
    message = error_line(caplog, ["fit", "--recipe", str(recipe)])
    assert message.startswith(f"error: Could not read recipe {recipe} as YAML, at line 4, column 16: "
                              "mapping values are not allowed here. ")
    assert INDENT_FIX in message


def test_the_base_a_recipe_extends_is_named_when_it_is_the_broken_one(tmp_path, caplog):
    (tmp_path / "base.yaml").write_text("trainer:\n\tmax_epochs: 1\n")  # a tab
    (tmp_path / "mine.yaml").write_text("base: base.yaml\nmodel:\n  lr: 0.1\n")
    message = error_line(caplog, ["fit", "--recipe", str(tmp_path / "mine.yaml")])
    assert (f"Could not read recipe {tmp_path / 'base.yaml'} as YAML, at line 2, column 1: while scanning for "
            "the next token: found character '\\t' that cannot start any token") in message


def test_a_python_tag_in_a_recipe_is_refused_and_never_runs(tmp_path, caplog):
    marker = tmp_path / "ran"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"base: quickstart\nmodel:\n  lr: {_making(marker)}\n")
    message = error_line(caplog, ["fit", "--recipe", str(recipe)])
    assert message == (f"error: Could not read recipe {recipe} as YAML, at line 3, column 7: the tag "
                       f"!!python/object/apply:os.mkdir {TAG_REFUSED}. Fix: remove the tag and write the plain value.")
    assert not marker.exists()


def test_a_config_file_with_a_bad_indent_names_the_file(tmp_path, caplog):
    (tmp_path / "more.yaml").write_text(BAD_INDENT)
    message = error_line(caplog, ["fit", "--config", "more.yaml"])
    assert message.startswith("error: Could not read --config file more.yaml as YAML, at line 3, column 16: "
                              "mapping values are not allowed here. ")
    assert INDENT_FIX in message


def test_a_section_file_and_a_config_string_name_what_was_passed(tmp_path, caplog):
    (tmp_path / "trainer.yaml").write_text("max_epochs: 1\n  devices: 1\n")
    message = error_line(caplog, ["fit", "--trainer", "trainer.yaml"])
    assert message.startswith("error: Could not read --trainer file trainer.yaml as YAML, at line 2, column 10: ")
    message = error_line(caplog, ["fit", "--config", "model: lr: 3"])
    assert message.startswith("error: Could not read --config value 'model: lr: 3' as YAML, at line 1, column 10: ")


@pytest.mark.parametrize("how", ["config file", "config string", "section file"])
def test_a_python_tag_in_a_config_is_refused_and_never_runs(tmp_path, caplog, how):
    marker = tmp_path / "ran"
    (tmp_path / "evil.yaml").write_text(f"model:\n  lr: {_making(marker)}\n")
    (tmp_path / "model.yaml").write_text(f"lr: {_making(marker)}\n")
    args = {"config file": ["--config", "evil.yaml"],
            "config string": ["--config", f"{{model: {{lr: {_making(marker)}}}}}"],
            "section file": ["--model", "model.yaml"]}[how]
    message = error_line(caplog, ["fit", *args])
    assert f"the tag !!python/object/apply:os.mkdir {TAG_REFUSED}" in message
    assert not marker.exists()


def test_a_python_tag_in_a_flag_value_is_a_plain_string_and_never_runs(tmp_path, caplog):
    # Flag values go to LightningCLI, whose YAML loader is a safe one too: the tag stays text.
    marker = tmp_path / "ran"
    message = error_line(caplog, ["fit", "--model.head_args", _making(marker)])
    assert "model.head_args" in message and "!!python/object/apply:os.mkdir" in message
    assert not marker.exists()


# -- the reader itself ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "a: !!python/object/apply:os.mkdir [{path}]",
    "a: !!python/object/new:os.mkdir [{path}]",
    "a: !!python/object/apply:builtins.exec ['import os; os.mkdir({path})']",
    "a: !!python/name:os.mkdir",
    "!!python/object/apply:os.mkdir [{path}]",
])
def test_parse_yaml_constructs_no_python_object(tmp_path, text):
    marker = tmp_path / "ran"
    with pytest.raises(InvalidValueError, match="is not allowed") as raised:
        parse_yaml(text.format(path=json.dumps(str(marker))), "test text")
    assert str(raised.value).startswith("Could not read test text as YAML, at line 1, column ")
    assert not marker.exists()


def test_parse_yaml_reads_plain_data_and_names_unknown_tags():
    assert parse_yaml("a: [1, 2]\nb: {c: null}\n", "x") == {"a": [1, 2], "b": {"c": None}}
    with pytest.raises(InvalidValueError, match=r"at line 1, column 4: the tag !custom is not allowed"):
        parse_yaml("a: !custom 3", "x")


def test_an_unclosed_bracket_says_where_it_opened_and_where_it_ended(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  head_args: [1, 2\n")
    with pytest.raises(InvalidValueError) as raised:
        load_recipe(str(recipe))
    assert str(raised.value).startswith(f"Could not read recipe {recipe} as YAML, at line 3, column 1: while "
                                        "parsing a flow sequence: expected ',' or ']', but got '<stream end>'.")


def test_a_recipe_that_is_not_text_is_one_line(tmp_path, caplog):
    recipe = tmp_path / "binary.yaml"
    recipe.write_bytes(b"\xff\xfe\x00model")
    message = error_line(caplog, ["fit", "--recipe", str(recipe)])
    assert message == (f"error: Expected recipe {recipe} to be a YAML text file (UTF-8), but it is not text. "
                       "Fix: pass a .yaml recipe file.")
