"""Does a checkpoint fit this run? Compared before any weight is loaded, so a mismatch is one
sentence naming what differs instead of a wall of tensor-size errors. Plain Python."""
from __future__ import annotations

from typing import Any, Optional

from ..errors import InvalidValueError

SETUP_KEYS = ("task", "num_classes", "classes", "arch", "head", "norm")


def checkpoint_setup(meta: dict[str, Any], hparams: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint was trained for, from its tresnet-ft metadata, else its hyperparameters."""
    classes = meta.get("classes", hparams.get("classes"))
    return {"task": meta.get("task", hparams.get("task")),
            "num_classes": len(classes) if classes is not None else hparams.get("num_classes"),
            "classes": classes,
            "arch": meta.get("arch", str(hparams.get("arch") or "").split(".")[0] or None),
            "head": meta.get("head", hparams.get("head")), "norm": meta.get("norm", hparams.get("norm"))}


def check_checkpoint_fits(theirs: dict[str, Any], ours: dict[str, Any], path: Optional[str]) -> None:
    """Raise :class:`InvalidValueError` naming every :data:`SETUP_KEYS` entry that differs (None: unknown, not compared)."""
    differ = [key for key in SETUP_KEYS if None not in (theirs[key], ours[key])
              and _as_list(theirs[key]) != _as_list(ours[key])]
    if differ:
        raise InvalidValueError(
            f"The checkpoint {path or ''} does not fit this run ({', '.join(differ)} differ): it holds "
            f"{_describe_setup(theirs)}, but this run has {_describe_setup(ours)}. Fix: use the data and "
            "--model settings it was trained with, or start from its weights with --model.pretrained CKPT "
            "instead of --ckpt_path (a head of another size is then re-initialised).")


def _as_list(value: Any) -> Any:
    """Tuples and lists compare equal when their items do (checkpoints store lists)."""
    return list(value) if isinstance(value, (list, tuple)) else value


def _describe_setup(setup: dict[str, Any]) -> str:
    classes = setup["classes"]
    shown = f"{setup['num_classes']} classes" + ("" if classes is None else
                                                  f" {list(classes)[:5]}{' ...' if len(classes) > 5 else ''}")
    return f"{setup['task']}, {shown}, {setup['arch']} with a {setup['head']} head and {setup['norm']} norms"
