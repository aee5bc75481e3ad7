"""Recipes: YAML configs for ``tresnet-ft fit``, each stating only what differs from its base.

A recipe file is a LightningCLI config (``model``, ``data``, ``trainer``, ``seed_everything``)
plus three keys of its own:

* ``base``: the recipe it extends (deep-merged: mappings merge, everything else is replaced);
* ``description``: one line for ``tresnet-ft recipes``;
* ``reference``: the published result it is measured against, and what it is expected to reach;
* ``hub``: where the same data is on the Hugging Face hub (``root`` and ``dataset_options`` for
  ``--data.dataset hf``), for ``tresnet-ft recipes``; inherited like the config.

``trainer.precision: auto`` is ours, not Lightning's: :func:`resolve_trainer_settings` turns it
into the best precision for the machine before the Trainer is built.

Recipes ship inside the package (``tresnet_ft/recipes/*.yaml``); a path to any YAML file works too.
"""
from __future__ import annotations

import copy
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import yaml
from ..errors import InvalidValueError, MissingInputError

RECIPE_DIR = Path(__file__).parent.parent / "recipes"
META_KEYS = ("base", "description", "reference", "hub")
# PyYAML's words for a tag its safe loader has no constructor for (``!!python/...``, ``!custom``).
_UNKNOWN_TAG = re.compile(r"could not determine a constructor for the tag '(tag:yaml\.org,2002:)?([^']*)'")


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    reference: str
    config: dict[str, Any]  # the merged LightningCLI config, metadata removed
    hub: Optional[dict[str, Any]] = None  # the recipe's data from the Hugging Face hub: root, dataset_options


def available_recipes() -> list[str]:
    """Names of the shipped recipes (files starting with ``_`` are bases, not listed)."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def _recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise MissingInputError(f"Recipe file {path} does not exist.")
        return path
    shipped = RECIPE_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise InvalidValueError(f"Unknown recipe {name_or_path!r}. Expected one of {available_recipes()} "
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


def _yaml_problem(err: yaml.YAMLError) -> tuple[str, str]:
    """``(where and what, the fix)`` of a YAML error, each on one line."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    tag = _UNKNOWN_TAG.search(problem)
    if tag:
        return (f"at {where}: the tag {'!!' if tag.group(1) else ''}{tag.group(2)} is not allowed (settings are read "
                "as plain data: a tag that would build a Python object is never run)",
                "remove the tag and write the plain value")
    context = getattr(err, "context", None)
    return (f"at {where}: {context + ': ' if context else ''}{problem}",
            "line up the keys of each mapping at one indent, with spaces (no tabs), and quote values "
            "that contain ': ' or ' #'")


def parse_yaml(text: str, source: str) -> Any:
    """``text`` as plain YAML data (``yaml.safe_load``: no tag ever builds a Python object or runs code).

    Raises:
        InvalidValueError: one line naming ``source`` (e.g. ``recipe my.yaml``), the line, the
            column and the problem, instead of PyYAML's multi-line error.
    """
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        what, fix = _yaml_problem(err)
        raise InvalidValueError(f"Could not read {source} as YAML, {what}. Fix: {fix}.") from err


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InvalidValueError(f"Expected recipe {path} to be a YAML text file (UTF-8), but it is not text. "
                                "Fix: pass a .yaml recipe file.") from None
    data = parse_yaml(text, f"recipe {path}") or {}
    if not isinstance(data, dict):
        raise InvalidValueError(f"Expected recipe {path} to be a YAML mapping, but got {type(data).__name__}.")
    return data


def load_recipe(name_or_path: str, _seen: tuple[str, ...] = ()) -> Recipe:
    """Read a recipe and everything it extends, merged into one LightningCLI config."""
    path = _recipe_path(name_or_path)
    if str(path) in _seen:
        raise InvalidValueError(f"Recipe {path} extends itself through {list(_seen)}.")
    raw = _read_yaml(path)
    config = {k: v for k, v in raw.items() if k not in META_KEYS}
    hub = raw["hub"] if isinstance(raw.get("hub"), dict) else None
    if raw.get("base"):
        base_ref = raw["base"]
        if str(base_ref).endswith((".yaml", ".yml")) and not Path(base_ref).is_absolute():
            base_ref = str(path.parent / base_ref)
        base = load_recipe(base_ref, _seen + (str(path),))
        config, hub = deep_merge(base.config, config), hub or base.hub
    return Recipe(name=path.stem, description=str(raw.get("description", "")),
                  reference=str(raw.get("reference", "")), config=config,
                  hub=hub)


def write_merged(recipe: Recipe, folder: Path) -> Path:
    """Write the merged config where LightningCLI can read it (``--config``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{recipe.name}.merged.yaml"
    path.write_text(yaml.safe_dump(recipe.config, sort_keys=False))
    return path


# -- settings that depend on the machine ------------------------------------------------------

AUTO_PRECISION = "auto"
CUDA_ACCELERATORS = ("auto", "gpu", "cuda")  # the accelerator values that run on CUDA when it is there
_BF16_PROBE = "import torch; print(int(torch.cuda.is_bf16_supported(including_emulation=False)))"


def cuda_supports_bf16() -> bool:
    """Whether the first visible CUDA device computes in bfloat16 natively (Ampere or newer).

    Emulated bf16 (V100, T4) does not count: it is slower than fp16. When this process has no CUDA
    context yet, the question is asked in a child process, because a context created here would
    stop Lightning from forking its DDP workers (notebooks).
    """
    import torch

    if not torch.cuda.is_initialized():
        try:
            probe = subprocess.run([sys.executable, "-c", _BF16_PROBE], capture_output=True, text=True, timeout=300)
            if probe.returncode == 0 and probe.stdout.strip() in ("0", "1"):
                return probe.stdout.strip() == "1"
        except (OSError, subprocess.TimeoutExpired):
            pass  # ask in this process instead
    return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(precision: Any, accelerator: Any, cuda_available: Optional[Callable[[], bool]] = None,
                      cuda_bf16: Optional[Callable[[], bool]] = None) -> tuple[Any, str]:
    """Lightning's precision for ``precision``, and why; only ``"auto"`` (or unset) is changed.

    ``auto`` is ``bf16-mixed`` when the run will use a CUDA device that has bf16, ``16-mixed`` on
    an older CUDA device, and ``32-true`` otherwise (CPU autocast is slower than float32).
    ``cuda_available`` (default ``torch.cuda.is_available``) and ``cuda_bf16`` (default
    :func:`cuda_supports_bf16`) are only called when needed.
    """
    if precision not in (AUTO_PRECISION, None):
        return precision, "as configured"
    if accelerator not in CUDA_ACCELERATORS:
        return "32-true", f"accelerator {accelerator}"
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available
    if not cuda_available():
        return "32-true", "no CUDA device"
    if (cuda_bf16 or cuda_supports_bf16)():
        return "bf16-mixed", "CUDA device supports bf16"
    return "16-mixed", "CUDA device without native bf16"


def _is_set(value: Any) -> bool:
    return value is not None and value is not False and str(value).lower() not in ("false", "0", "null", "none")


def resolve_trainer_settings(recipe_trainer: dict[str, Any], user_trainer: dict[str, Any],
                             **probes: Callable[[], bool]) -> tuple[dict[str, Any], list[str]]:
    """The recipe's machine-dependent trainer values, resolved; and one line per decision.

    ``user_trainer`` holds what the user set on top of the recipe (flags, extra configs); it wins.
    Returns the values to write into the trainer config (``precision``, and ``benchmark: False``
    when determinism is asked for and the user did not choose ``benchmark``: PyTorch ignores
    ``cudnn.deterministic`` while ``cudnn.benchmark`` is on) and the log lines.
    ``probes``: ``cuda_available``/``cuda_bf16`` for :func:`resolve_precision`.
    """
    merged = {**recipe_trainer, **user_trainer}
    precision, reason = resolve_precision(merged.get("precision", AUTO_PRECISION), merged.get("accelerator", "auto"),
                                          **probes)
    values: dict[str, Any] = {"precision": precision}
    notes = [f"precision: {precision} ({reason})"]
    if _is_set(merged.get("deterministic")) and merged.get("benchmark") and "benchmark" not in user_trainer:
        values["benchmark"] = False
        notes.append("cudnn.benchmark: off (deterministic was asked for)")
    return values, notes
