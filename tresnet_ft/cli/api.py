"""One-call training for notebooks: ``tresnet_ft.fit(recipe="quickstart", trainer={"max_epochs": 3})``."""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from .command import _release_unused, _training_args, check_training_inputs


def _flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict) and not {"class_path", "init_args"} & set(value):
        return [item for key, sub in value.items() for item in _flatten(f"{prefix}.{key}", sub)]
    return [(prefix, value)]


def override_args(overrides: dict[str, Any]) -> list[str]:
    """``{"trainer": {"max_epochs": 3}, "model.lr": 1e-3}`` -> ``["--trainer.max_epochs=3", "--model.lr=0.001"]``."""
    args = []
    for key, value in overrides.items():
        for dotted, leaf in _flatten(key, value):
            # A pathlib.Path (e.g. trainer={"default_root_dir": tmp_path}) is a path, not JSON.
            text = os.fspath(leaf) if isinstance(leaf, (str, os.PathLike)) else json.dumps(leaf)
            args.append(f"--{dotted}={text}")
    return args


def fit(recipe: str = "quickstart", logger: Optional[str] = None, **overrides: Any):
    """Train with a recipe and overrides, as ``tresnet-ft fit`` would.

    Args:
        recipe: a recipe name (``tresnet-ft recipes``) or a path to a YAML file.
        logger: ``"csv,tensorboard"`` (default), add ``wandb`` for Weights & Biases.
        **overrides: config sections or dotted keys, e.g. ``trainer={"max_epochs": 3}``,
            ``data={"root": "photos/"}``, or ``**{"model.lr": 3e-4}``.
            ``trainer={"default_root_dir": DIR}`` puts the run in ``DIR/<recipe>/version_<N>/``
            (default ``runs``), and ``ckpt_path="last"`` resumes the newest run there.

    Returns:
        ``(module, best_checkpoint_path)``: the trained :class:`TResNetClassifier` (its weights
        are the final ones, EMA-averaged when EMA is on) and the path of the best checkpoint.
    """
    argv = ["fit", "--recipe", recipe] + (["--logger", logger] if logger else []) + override_args(overrides)
    check_training_inputs(argv)  # first: missing weights or data fail it in seconds
    args, run_name, claimed = _training_args(argv)
    from .lightning_cli import run_cli

    try:
        cli = run_cli(args, run_name)
    except BaseException:  # as the command does: a run that wrote nothing leaves no empty version_<N>
        _release_unused(claimed)
        raise
    return cli.model, cli.trainer.checkpoint_callback.best_model_path
