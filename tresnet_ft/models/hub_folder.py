"""Folders in timm's Hugging Face hub layout: ``config.json`` + ``model.safetensors``.

timm reads such a folder with ``timm.create_model("hf-hub:ORG/NAME")`` or
``"local-dir:/path"`` (``timm/models/_hub.py``: ``load_model_config_from_path``,
``load_state_dict_from_path``); this module is our reader of the same folders, for
:func:`tresnet_ft.create_model` and (above it) ``load_classifier``. A source is

* ``hf-hub:ORG/NAME`` (optionally ``@REVISION``): fetched with ``huggingface_hub.snapshot_download``
  into its cache, honouring ``HF_HUB_OFFLINE``;
* ``local-dir:DIR`` or a plain folder path.

A folder is untrusted input: ``config.json`` is size-checked and every field read is checked
(:class:`HubConfig`); no path, URL or module it names is ever followed (timm's ``file``, ``url``
and ``hf_hub_id`` entries are ignored); the weights are read with safetensors only.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .tresnet import ARCHS
from .weights import max_checkpoint_bytes, read_checkpoint
from ..heads import HEADS, create_head
from ..errors import InvalidValueError, MissingInputError, UnavailableError

HUB_PREFIX = "hf-hub:"
LOCAL_PREFIX = "local-dir:"
CONFIG_FILE = "config.json"  # timm: save_config_for_hf / load_model_config_from_path
WEIGHTS_FILE = "model.safetensors"  # timm: HF_SAFE_WEIGHTS_NAME, first of _PREFERRED_FILES
METADATA_FILE = "tresnet_ft.json"  # ours (classifier/hub_folder.py); timm never reads it
HUB_FILES = (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE)  # what is fetched from the hub: nothing else is read
MAX_JSON_BYTES = 16 << 20  # 11,221 ImageNet-21k label names take ~0.3 MB; far more is not a config
MAX_CLASSES = 1_000_000
# Keys of model_args we understand: timm's TResNet arguments that do not change the weights' shapes,
# and ours for the head (a folder with an ML-Decoder head: timm's TResNet refuses "head", loudly).
MODEL_ARGS = ("head", "head_args", "drop_rate", "drop_path_rate")
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,127}")


def is_hub_source(source: Any) -> bool:
    """Whether ``source`` names a hub-layout folder: ``hf-hub:...``, ``local-dir:...`` or a folder path."""
    if isinstance(source, Path):
        return source.expanduser().is_dir()
    if not isinstance(source, str):
        return False
    return source.startswith((HUB_PREFIX, LOCAL_PREFIX)) or Path(source).expanduser().is_dir()


@dataclass(frozen=True)
class HubConfig:
    """The fields of a ``config.json`` that rebuild the model, each checked.

    Attributes:
        architecture: a TResNet variant (``tresnet_m``, ...).
        num_classes: outputs ``K`` of the head.
        head, head_args: our head and its settings (from ``model_args``; ``linear`` when absent).
        label_names: ``K`` class names, or None when the config has none.
        pretrained_cfg: timm's data and weight settings (input_size, crop_pct, crop_mode, mean, std, ...),
            as a plain dict; read by ``tresnet_ft.classifier.hub_folder``.
    """

    architecture: str
    num_classes: int
    head: str = "linear"
    head_args: dict[str, Any] = field(default_factory=dict)
    label_names: Optional[list[str]] = None
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)


def _config_error(path: Path, expected: str, got: Any) -> InvalidValueError:
    shown = repr(got)[:80]
    return InvalidValueError(f"Unexpected {path}: expected {expected}, but got {shown}. Fix: pass a folder written "
                             "by `tresnet-ft export --format hf` or timm's save_for_hf.")


def read_json_file(path: Path) -> dict[str, Any]:
    """A JSON object from ``path`` (at most :data:`MAX_JSON_BYTES`), or an error naming the file."""
    if not path.is_file():
        raise MissingInputError(f"Expected {path.name} in {path.parent}, but it is not there. Fix: pass a folder "
                                "in timm's hub layout (config.json and model.safetensors), e.g. one written by "
                                "`tresnet-ft export CKPT --format hf -o DIR`.")
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise InvalidValueError(f"Refusing to read {path}: {size:,} bytes, more than the {MAX_JSON_BYTES:,} a "
                                "config may take. Fix: pass a folder written by tresnet-ft or timm.")
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidValueError(f"Could not read {path}: not UTF-8 JSON ({str(err)[:120]}). Fix: pass a folder "
                                "written by tresnet-ft or timm.") from None
    if not isinstance(value, dict):
        raise _config_error(path, "a JSON object", value)
    return value


def read_hub_config(folder: Path) -> HubConfig:
    """Read and check ``folder/config.json`` as timm's ``_parse_model_cfg`` reads it."""
    path = folder / CONFIG_FILE
    raw = read_json_file(path)
    if "pretrained_cfg" not in raw:  # timm's legacy single-dict layout: everything in one dict
        raw = {"architecture": raw.get("architecture"), "num_classes": raw.get("num_classes"),
               "label_names": raw.get("label_names", raw.get("labels")), "pretrained_cfg": raw}
    pretrained_cfg = raw["pretrained_cfg"]
    if not isinstance(pretrained_cfg, dict):
        raise _config_error(path, "pretrained_cfg to be an object", pretrained_cfg)
    architecture = raw.get("architecture")
    if not isinstance(architecture, str) or architecture not in ARCHS:
        raise _config_error(path, f"architecture to be one of {sorted(ARCHS)} (tresnet-ft reads TResNets only)",
                            architecture)
    num_classes = raw.get("num_classes", pretrained_cfg.get("num_classes", 1000))  # timm: top level wins
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= MAX_CLASSES:
        raise _config_error(path, f"num_classes to be an integer from 1 to {MAX_CLASSES:,}", num_classes)
    label_names = raw.get("label_names")
    if label_names is not None and not (isinstance(label_names, list) and len(label_names) == num_classes
                                        and all(isinstance(name, str) for name in label_names)):
        raise _config_error(path, f"label_names to be a list of {num_classes} names", label_names)
    head, head_args = _head_settings(path, raw.get("model_args") or {})
    return HubConfig(architecture, num_classes, head, head_args, label_names, dict(pretrained_cfg))


def _head_settings(path: Path, model_args: Any) -> tuple[str, dict[str, Any]]:
    """``(head, head_args)`` from timm's ``model_args``: ``linear`` with ``drop_rate``, or ours."""
    if not isinstance(model_args, dict) or set(model_args) - set(MODEL_ARGS):
        raise _config_error(path, f"model_args to be an object with some of {list(MODEL_ARGS)}", model_args)
    head = model_args.get("head", "linear")
    head_args = model_args.get("head_args", {})
    if not isinstance(head, str) or head not in HEADS:
        raise _config_error(path, f"model_args.head to be one of {sorted(HEADS)}", head)
    plain = (int, float, bool, type(None))
    if not isinstance(head_args, dict) or not all(isinstance(k, str) and isinstance(v, plain)
                                                  for k, v in head_args.items()):
        raise _config_error(path, "model_args.head_args to be an object of numbers and flags", head_args)
    if head == "linear" and "drop_rate" in model_args:
        head_args = {**head_args, "drop_rate": model_args["drop_rate"]}
    return head, dict(head_args)


def read_hub_weights(folder: Path) -> dict[str, torch.Tensor]:
    """``folder/model.safetensors`` as a state dict (size-checked, never unpickled)."""
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise MissingInputError(f"Expected {WEIGHTS_FILE} in {folder}, but it is not there (tresnet-ft reads "
                                "safetensors weights only, never pickles). Fix: pass a folder written by "
                                "`tresnet-ft export CKPT --format hf`, or convert the weights to safetensors.")
    size, limit = path.stat().st_size, max_checkpoint_bytes()
    if size > limit:
        raise InvalidValueError(f"Refusing to load {path}: {size:,} bytes, above the limit of {limit:,} bytes "
                                "(TRESNET_FT_MAX_CHECKPOINT_BYTES). Fix: raise the limit if you trust the file.")
    state = read_checkpoint(path)
    return {str(key): value for key, value in state.items()}


def check_head_fits(num_features: int, head: str, head_args: dict[str, Any], num_classes: int,
                    state: dict[str, torch.Tensor], where: Any) -> None:
    """Refuse weights whose ``head.*`` tensors are not those of the head the config describes.

    The head is built on the meta device (nothing allocated), so a config that claims a million
    classes cannot make us allocate a head the file does not hold.
    """
    try:
        with torch.device("meta"):
            expected = {f"head.{k}": tuple(v.shape)
                        for k, v in create_head(head, num_features, num_classes, **head_args).state_dict().items()}
    except (TypeError, ValueError, ArithmeticError, RuntimeError, NotImplementedError) as err:
        raise InvalidValueError(f"Unexpected {where}: its head settings {head_args!r} do not make a {head} head "
                                f"({type(err).__name__}: {str(err)[:120]}).") from None
    got = {k: tuple(v.shape) for k, v in state.items() if k.startswith("head.")}
    if got != expected:
        raise InvalidValueError(
            f"The weights in {where} do not fit the {head} head for {num_classes} classes that its "
            f"config describes: head tensors {dict(list(got.items())[:4])} instead of {dict(list(expected.items())[:4])}. "
            "Fix: export the folder again with `tresnet-ft export CKPT --format hf`.")


def resolve_hub_folder(source: Union[str, Path]) -> Path:
    """The local folder of ``source`` (``hf-hub:ORG/NAME[@REV]``, ``local-dir:DIR`` or ``DIR``).

    Raises:
        MissingInputError: a local folder that does not exist.
        UnavailableError: a hub id that is neither cached nor reachable (offline, private, no such repo).
    """
    text = str(source)
    if text.startswith(HUB_PREFIX):
        return _download(text[len(HUB_PREFIX):])
    path = Path(text[len(LOCAL_PREFIX):] if text.startswith(LOCAL_PREFIX) else text).expanduser()
    if not path.is_dir():
        raise MissingInputError(f"Expected a folder in timm's hub layout at {path}, but "
                                f"{'it is a file' if path.exists() else 'there is none'}. Fix: pass the folder "
                                "written by `tresnet-ft export CKPT --format hf -o DIR` (or hf-hub:ORG/NAME).")
    return path


def split_repo_id(repo: str) -> tuple[str, Optional[str]]:
    """``ORG/NAME[@REVISION]`` → ``(ORG/NAME, REVISION or None)``, checked (as timm's ``hf_split``)."""
    repo_id, _, revision = repo.partition("@")
    if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id or (revision and not _REVISION.fullmatch(revision)):
        raise InvalidValueError(f"Expected a hub id ORG/NAME (optionally @REVISION), but got {repo[:100]!r}. "
                                "Fix: copy the id from the model's hub page.")
    return repo_id, revision or None


def _download(repo: str) -> Path:
    """``snapshot_download`` of :data:`HUB_FILES`; the cache alone when offline or unreachable."""
    from ..fetch.download import unreachable_urls
    from ..fetch.packages import import_package

    repo_id, revision = split_repo_id(repo)
    hub = import_package("huggingface_hub", "Loading a model from the Hugging Face hub")
    from huggingface_hub import constants, errors

    offline = bool(constants.HF_HUB_OFFLINE)
    # Without an answer the hub client retries for ~23 s; the probe takes at most a few seconds.
    failure = None if offline else unreachable_urls([constants.ENDPOINT]).get(constants.ENDPOINT)
    try:
        return Path(hub.snapshot_download(repo_id, revision=revision, allow_patterns=list(HUB_FILES),
                                          local_files_only=offline or failure is not None))
    except (errors.RepositoryNotFoundError, errors.GatedRepoError, errors.RevisionNotFoundError) as err:
        raise UnavailableError(
            f"The hub has no model {repo_id}{'@' + revision if revision else ''} that you may read "
            f"({type(err).__name__}). Fix: check the id; for a private or gated repo log in with `hf auth login` "
            "or set HF_TOKEN.") from None
    except Exception as err:  # the client raises many types for "offline", "not cached", "incomplete"
        why = "HF_HUB_OFFLINE=1 forbids downloading" if offline else f"{constants.ENDPOINT}: {failure or type(err).__name__}"
        raise UnavailableError(
            f"Could not fetch {HUB_PREFIX}{repo}: it is not in the Hugging Face cache {constants.HF_HUB_CACHE} and "
            f"{why}. Fix: run once with network access to fill the cache, or download it elsewhere "
            f"(`hf download {repo_id} --local-dir DIR`) and pass DIR.") from None


def missing_hub_folder(source: str) -> Optional[Any]:
    """What keeps ``source`` from loading without the network (a ``MissingInput``), or None."""
    from ..fetch.download import MissingInput

    if not source.startswith(HUB_PREFIX):
        try:
            resolve_hub_folder(source)
        except MissingInputError as err:
            return MissingInput(str(err), "")
        return None
    import huggingface_hub
    from huggingface_hub import constants

    repo_id, revision = split_repo_id(source[len(HUB_PREFIX):])
    cached = huggingface_hub.try_to_load_from_cache(repo_id, WEIGHTS_FILE, revision=revision)
    if isinstance(cached, str):
        return None
    offline = bool(constants.HF_HUB_OFFLINE)
    return MissingInput(
        f"Could not fetch {source}: not in the Hugging Face cache {constants.HF_HUB_CACHE}"
        + (", and HF_HUB_OFFLINE=1 forbids downloading." if offline else "."),
        f"Fix: run once with network access to fill the cache, or `hf download {repo_id} --local-dir DIR` "
        "elsewhere and pass DIR.", None if offline else f"{constants.ENDPOINT}/{repo_id}")
