"""Recipes: YAML configs for ``tresnet-ft fit``, each stating only what differs from its base.

A recipe file is a LightningCLI config (``model``, ``data``, ``trainer``, ``seed_everything``)
plus three keys of its own:

* ``base``: the recipe it extends (deep-merged: mappings merge, everything else is replaced);
* ``description``: one line for ``tresnet-ft recipes``;
* ``reference``: the published result it is measured against, and what it is expected to reach.

Recipes ship inside the package (``tresnet_ft/recipes/*.yaml``); a path to any YAML file works too.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

RECIPE_DIR = Path(__file__).parent / "recipes"
META_KEYS = ("base", "description", "reference")


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    reference: str
    config: dict[str, Any]  # the merged LightningCLI config, metadata removed


def available_recipes() -> list[str]:
    """Names of the shipped recipes (files starting with ``_`` are bases, not listed)."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def _recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"Recipe file {path} does not exist.")
        return path
    shipped = RECIPE_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise ValueError(f"Unknown recipe {name_or_path!r}. Expected one of {available_recipes()} "
                         "or a path to a .yaml file (see `tresnet-ft recipes`).")
    return shipped


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``: nested mappings merge, other values replace."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        data = yaml.safe_load(handle) or {}
    if not isinstance(data, dict):
        raise ValueError(f"Expected recipe {path} to be a YAML mapping, but got {type(data).__name__}.")
    return data


def load_recipe(name_or_path: str, _seen: tuple[str, ...] = ()) -> Recipe:
    """Read a recipe and everything it extends, merged into one LightningCLI config."""
    path = _recipe_path(name_or_path)
    if str(path) in _seen:
        raise ValueError(f"Recipe {path} extends itself through {list(_seen)}.")
    raw = _read_yaml(path)
    config = {k: v for k, v in raw.items() if k not in META_KEYS}
    if raw.get("base"):
        base_ref = raw["base"]
        if str(base_ref).endswith((".yaml", ".yml")) and not Path(base_ref).is_absolute():
            base_ref = str(path.parent / base_ref)
        config = deep_merge(load_recipe(base_ref, _seen + (str(path),)).config, config)
    return Recipe(name=path.stem, description=str(raw.get("description", "")),
                  reference=str(raw.get("reference", "")), config=config)


def write_merged(recipe: Recipe, folder: Path) -> Path:
    """Write the merged config where LightningCLI can read it (``--config``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{recipe.name}.merged.yaml"
    path.write_text(yaml.safe_dump(recipe.config, sort_keys=False))
    return path
