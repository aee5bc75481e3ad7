"""User mistakes are one family (tresnet_ft.errors) that the CLI prints as one line with exit code 2;
anything else is a bug and keeps its traceback."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tresnet_ft
from tresnet_ft import errors
from tresnet_ft.cli import tools
from tresnet_ft.cli.command import main
from tresnet_ft.data import DatasetNotFoundError, UnreadableImageError
from tresnet_ft.fetch.packages import import_package
from tresnet_ft.models.weights import CorruptCheckpointError, UnsafeCheckpointError, WeightsUnavailableError

from run_helpers import error_line

PACKAGE = Path(tresnet_ft.__file__).parent


@pytest.mark.parametrize("error_type, builtin", [
    (errors.InvalidValueError, ValueError), (errors.MissingInputError, FileNotFoundError),
    (errors.MissingPackageError, ImportError), (errors.UnavailableError, RuntimeError),
    (errors.TrainingDivergedError, FloatingPointError), (errors.DiskFullError, OSError),
    (DatasetNotFoundError, FileNotFoundError),
    (UnreadableImageError, ValueError), (UnsafeCheckpointError, ValueError), (CorruptCheckpointError, ValueError),
    (WeightsUnavailableError, RuntimeError),
])
def test_every_user_error_is_in_the_family_and_still_its_builtin(error_type, builtin):
    assert issubclass(error_type, errors.UserError) and issubclass(error_type, builtin)


def test_a_user_error_is_one_line_and_exit_code_2(caplog, monkeypatch):
    def refuse(argv):
        raise errors.InvalidValueError("Expected a positive batch size, but got 0. Fix: --batch-size 8.")

    monkeypatch.setattr(tools, "run_tool", refuse)
    assert error_line(caplog, ["predict"]) == "error: Expected a positive batch size, but got 0. Fix: --batch-size 8."


@pytest.mark.parametrize("bug", [ValueError("shapes [2, 3] and [4] do not broadcast"), KeyError("head.fc.weight"),
                                 FileNotFoundError("/tmp/internal-cache")])
def test_a_bug_keeps_its_traceback(monkeypatch, bug):
    """A plain ValueError (or any non-family error) raised inside the package is not the user's
    mistake: the CLI must not hide it behind one calm line."""
    def crash(argv):
        raise bug

    monkeypatch.setattr(tools, "run_tool", crash)
    with pytest.raises(type(bug)) as caught:
        main(["predict"])
    assert caught.value is bug


def test_a_missing_optional_package_names_the_pip_install():
    with pytest.raises(errors.MissingPackageError, match=r"needs the no_such_pkg_xyz package.*pip install nsp"):
        import_package("no_such_pkg_xyz", "Testing", pip_name="nsp")


def _raised_builtins(path: Path) -> list[str]:
    """``file:line`` of every ``raise ValueError(...)`` / ``raise FileNotFoundError(...)`` in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
            if node.exc.func.id in ("ValueError", "FileNotFoundError"):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    return found


def test_the_package_raises_user_mistakes_only_through_the_family():
    """Bad input raises InvalidValueError / MissingInputError (subclasses of the builtins): a bare
    ValueError would be a bug's traceback in the CLI; internal invariants use ``assert``."""
    offenders = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in _raised_builtins(path)]
    assert offenders == [], f"raise InvalidValueError/MissingInputError from tresnet_ft.errors instead: {offenders}"
