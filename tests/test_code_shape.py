"""The package keeps its shape (GUIDE.md, sections 2 and 4): short files, functions that fit on a
screen, and imports that flow one way, from the command line down to the plain-PyTorch packages.

Read with ``ast``, not imported: an import inside a function or under ``TYPE_CHECKING`` counts as
much as one at the top. Dynamic imports (``importlib.import_module``) are not seen.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tresnet_ft"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60  # from ``def`` to the function's last line, docstring included

# The top-level packages (and modules) of tresnet_ft, lowest first. A module imports only from its
# own package and from lower layers; two packages of one layer never import each other (so
# training and inference stay side by side). Heads sit below models because a TResNet builds its
# head (models/tresnet.py uses heads.create_head); a head never needs a backbone.
LAYERS = [
    ["errors", "version"],
    ["outputs"],  # writes files atomically; uses errors, used by every layer that writes for the user
    ["fetch"],
    ["heads", "losses"],
    ["models"],
    ["data"],
    ["classifier"],
    ["training", "inference"],
    ["serve"],  # tresnet-ft serve: the HTTP server and its web page, over inference
    ["cli"],
]
LAYER_OF = {name: rank for rank, names in enumerate(LAYERS) for name in names}
ROOT = "tresnet_ft"


def source_files(package: Path = PACKAGE) -> list[Path]:
    return sorted(path for path in package.rglob("*.py") if "__pycache__" not in path.parts)


def name_of(path: Path, package: Path = PACKAGE) -> str:
    return str(path.relative_to(package.parent))


def too_long_files(paths: list[Path], package: Path = PACKAGE) -> list[str]:
    """``file: N lines`` for each file over :data:`MAX_FILE_LINES`."""
    found = []
    for path in paths:
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_FILE_LINES:
            found.append(f"{name_of(path, package)}: {lines} lines (at most {MAX_FILE_LINES})")
    return found


def too_long_functions(paths: list[Path], package: Path = PACKAGE) -> list[str]:
    """``file:line name: N lines`` for each function or method over :data:`MAX_FUNCTION_LINES`."""
    found = []
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append(f"{name_of(path, package)}:{node.lineno} {node.name}: {lines} lines "
                                 f"(at most {MAX_FUNCTION_LINES})")
    return found


def imported_modules(path: Path, package: Path = PACKAGE) -> list[tuple[int, list[str]]]:
    """``(line, dotted parts)`` of every tresnet_ft import in ``path``, in line order, relative
    imports resolved. ``from . import x`` and ``from tresnet_ft import x`` give ``[..., "x"]``:
    ``x`` may be a module."""
    here = list(path.relative_to(package.parent).with_suffix("").parts)[:-1]  # the file's package
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module.split(".") if node.module else []
            base = here[:len(here) - (node.level - 1)] + module if node.level else module
            found += ([(node.lineno, base + [alias.name]) for alias in node.names]
                      if not node.module or base == [ROOT] else [(node.lineno, base)])
    return sorted((line, module) for line, module in found if module[0] == ROOT)


def layer_violations(paths: list[Path], package: Path = PACKAGE) -> list[str]:
    """``file:line imports X (why)`` for each import against :data:`LAYERS`."""
    found = []
    for path in paths:
        if path == package / "__init__.py":  # re-exports the public API (the Lightning parts lazily)
            continue
        own = path.relative_to(package).with_suffix("").parts[0]
        for line, module in imported_modules(path, package):
            # `from tresnet_ft import __version__` imports the top level itself: no target package.
            target = module[1] if len(module) > 1 and _is_submodule(package, module[1]) else None
            if target == own:
                continue
            why = _why_not_allowed(own, target)
            if why:
                found.append(f"{name_of(path, package)}:{line} imports {'.'.join(module)} ({why})")
    return found


def _is_submodule(package: Path, name: str) -> bool:
    return (package / name).is_dir() or (package / f"{name}.py").is_file()


def _why_not_allowed(own: str, target: str | None) -> str | None:
    if own not in LAYER_OF:
        return f"{own} is in no layer; add it to LAYERS"
    if target is None:
        return "the top-level package re-exports every layer; import from the module that defines it"
    if target not in LAYER_OF:
        return f"{target} is in no layer; add it to LAYERS"
    if LAYER_OF[target] == LAYER_OF[own]:
        return f"{own} and {target} share a layer and stay independent"
    if LAYER_OF[target] > LAYER_OF[own]:
        return f"{target} is above {own}"
    return None


def report(offences: list[str], rule: str) -> str:
    return f"{len(offences)} offence(s) against: {rule}\n  " + "\n  ".join(offences)


# -- the package -------------------------------------------------------------------------------------


def test_every_package_and_top_level_module_has_a_layer():
    tops = {path.relative_to(PACKAGE).with_suffix("").parts[0] for path in source_files()} - {"__init__"}
    assert tops <= set(LAYER_OF), f"Not in LAYERS: {sorted(tops - set(LAYER_OF))}"


def test_no_file_is_longer_than_400_lines():
    offences = too_long_files(source_files())
    assert not offences, report(offences, f"a file has at most {MAX_FILE_LINES} lines; split it by concern")


def test_no_function_is_longer_than_60_lines():
    offences = too_long_functions(source_files())
    assert not offences, report(offences, f"a function fits on a screen ({MAX_FUNCTION_LINES} lines); "
                                          "extract named helpers")


def test_imports_flow_down_the_layers():
    offences = layer_violations(source_files())
    layers = " < ".join("[" + ", ".join(names) + "]" for names in LAYERS)
    assert not offences, report(offences, f"imports flow down the layers {layers}")


# -- the checks themselves, on a made-up package -----------------------------------------------------


@pytest.fixture
def fake_package(tmp_path) -> Path:
    package = tmp_path / ROOT
    files = {
        "__init__.py": "from .cli import main\n",  # exempt: the top level re-exports
        "errors.py": "",
        "models/__init__.py": "from .tresnet import TResNet\nfrom ..heads import create_head\n",
        "models/tresnet.py": "from ..errors import InvalidValueError\nfrom . import layers\n",
        "heads/__init__.py": "from ..models import TResNet\n",  # up a layer
        "losses/asl.py": "from tresnet_ft.heads import create_head\n",  # same layer
        "training/module.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                               "    from ..inference.predict import Predictor\n"
                               "def f():\n    import tresnet_ft.cli.api\n"),
        "inference/sidecar.py": "from .. import __version__\nimport tresnet_ft.training\n",
        "cli/api.py": "from ..training.module import f\nfrom ..inference import sidecar\n",
    }
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    return package


def test_layer_check_resolves_relative_and_nested_imports(fake_package):
    found = imported_modules(fake_package / "models" / "tresnet.py", fake_package)
    assert found == [(1, ["tresnet_ft", "errors"]), (2, ["tresnet_ft", "models", "layers"])]
    found = imported_modules(fake_package / "models" / "__init__.py", fake_package)
    assert found == [(1, ["tresnet_ft", "models", "tresnet"]), (2, ["tresnet_ft", "heads"])]


def test_layer_check_names_each_import_against_the_layers(fake_package):
    found = layer_violations(source_files(fake_package), fake_package)
    assert found == [
        "tresnet_ft/heads/__init__.py:1 imports tresnet_ft.models (models is above heads)",
        "tresnet_ft/inference/sidecar.py:1 imports tresnet_ft.__version__ (the top-level package re-exports "
        "every layer; import from the module that defines it)",
        "tresnet_ft/inference/sidecar.py:2 imports tresnet_ft.training (inference and training share a "
        "layer and stay independent)",
        "tresnet_ft/losses/asl.py:1 imports tresnet_ft.heads (losses and heads share a layer and stay "
        "independent)",
        "tresnet_ft/training/module.py:3 imports tresnet_ft.inference.predict (training and inference share "
        "a layer and stay independent)",
        "tresnet_ft/training/module.py:5 imports tresnet_ft.cli.api (cli is above training)",
    ]


def test_length_checks_count_from_def_to_the_last_line(tmp_path):
    package = tmp_path / ROOT
    package.mkdir()
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_FUNCTION_LINES - 2))
    (package / "ok.py").write_text(f"class B:\n    @decorator\n    def fits(self):\n        '''Doc.'''\n{body}\n")
    (package / "long.py").write_text(f"class A:\n    def method(self):\n{body}\n{body}\n" + "\n" * 300)
    paths = source_files(package)
    assert too_long_functions(paths, package) == [
        f"tresnet_ft/long.py:2 method: {2 * (MAX_FUNCTION_LINES - 2) + 1} lines (at most {MAX_FUNCTION_LINES})"]
    lines = 2 + 2 * (MAX_FUNCTION_LINES - 2) + 300
    assert too_long_files(paths, package) == [f"tresnet_ft/long.py: {lines} lines (at most {MAX_FILE_LINES})"]
