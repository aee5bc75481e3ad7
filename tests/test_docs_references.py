"""Every test the docs cite (``tests/FILE.py::NAME``) exists, so the reliability tables stay true."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"tests/(\w+\.py)::(\w+)")
DOCS = sorted([*(REPO / "docs").glob("*.md"), REPO / "README.md"])


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_cited_test_exists(doc):
    missing = []
    for file_name, name in CITATION.findall(doc.read_text(encoding="utf-8")):
        path = REPO / "tests" / file_name
        if not path.is_file() or name not in _test_names(path):
            missing.append(f"tests/{file_name}::{name}")
    assert not missing, f"{doc.name} cites tests that do not exist: {sorted(set(missing))}"
