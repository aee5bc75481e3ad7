"""``create_model``: a TResNet variant by name, with a head and (optionally) pretrained weights."""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .hub_folder import HUB_PREFIX, LOCAL_PREFIX, check_head_fits, is_hub_source, read_hub_config, \
    read_hub_weights, resolve_hub_folder
from .tresnet import ARCHS, TResNet
from .weights import (
    PRETRAINED,
    CorruptCheckpointError,
    default_tag,
    download_from_hub,
    download_url,
    read_checkpoint,
    to_timm_keys,
)
from ..errors import InvalidValueError

log = logging.getLogger(__name__)

Pretrained = Union[None, bool, str, Path]


def _split_name(name: str) -> tuple[str, Optional[str]]:
    arch, _, tag = name.partition(".")
    if arch not in ARCHS:
        raise InvalidValueError(f"Expected a model name among {sorted(ARCHS)} (optionally with a tag such as "
                         f"'tresnet_m.miil_in21k'), but got {name!r}.")
    return arch, tag or None


def _resolve_source(arch: str, name_tag: Optional[str], pretrained: Pretrained) -> Optional[str]:
    """What to load: ``None``, a published ``arch.tag``, a URL, or a local path (as a string)."""
    if pretrained is None or pretrained is False:
        return f"{arch}.{name_tag}" if name_tag else None
    if pretrained is True:
        return f"{arch}.{name_tag or default_tag(arch)}"
    source = str(pretrained)
    if source.startswith((HUB_PREFIX, LOCAL_PREFIX)):  # a folder in timm's hub layout (hub_folder.py)
        return source
    if f"{arch}.{source}" in PRETRAINED:  # a bare tag
        return f"{arch}.{source}"
    if source in PRETRAINED or "://" in source or Path(source).expanduser().exists():
        return source
    if Path(source).suffix in (".safetensors", ".pth", ".pt", ".ckpt", ".bin"):
        return source  # a missing file: read_checkpoint names it
    raise InvalidValueError(f"Expected pretrained to be True, a tag of {arch} ({[n.split('.', 1)[1] for n in PRETRAINED if n.startswith(arch + '.')]}), "
                     f"a URL or a weights file, but got {source!r}.")


def pretrained_source(name: str, pretrained: Pretrained = None) -> Optional[str]:
    """What ``create_model(name, pretrained=pretrained)`` loads: ``None``, a published ``arch.tag``,
    a URL or a local path. Raises ValueError for an unknown name or ``pretrained`` value."""
    arch, tag = _split_name(name)
    return _resolve_source(arch, tag, pretrained)


def _fetch(source: str) -> Path:
    if source in PRETRAINED:
        return download_from_hub(source)
    if "://" in source:
        return download_url(source)
    return Path(source).expanduser()


def _read_fetched(source: str) -> Any:
    """Fetch and read ``source``; a corrupt file in the URL download cache is fetched once more."""
    path = _fetch(source)
    try:
        return read_checkpoint(path)
    except CorruptCheckpointError:
        if "://" not in source:
            raise
        log.warning("The cached download %s of %s is corrupt; downloading it again.", path, source)
        path.unlink()
        return read_checkpoint(_fetch(source))


def load_pretrained(model: TResNet, source: Union[str, Path]) -> TResNet:
    """Load weights from a published ``arch.tag``, a URL or a file into ``model`` (in place).

    A head whose keys or shapes differ from the checkpoint's (other class count, other head
    type) keeps its fresh initialisation, with one log line. Any other missing or unexpected key
    is an error listing them.
    """
    return load_state(model, to_timm_keys(_read_fetched(str(source))), source)


def load_state(model: TResNet, state: dict[str, torch.Tensor], source: Any) -> TResNet:
    """Load ``state`` (timm's keys) into ``model`` as :func:`load_pretrained` does; ``source`` names it."""
    own = model.state_dict()
    head_state = {k: v for k, v in state.items() if k.startswith("head.")}
    own_head = {k: v for k, v in own.items() if k.startswith("head.")}
    if head_state and {k: v.shape for k, v in head_state.items()} != {k: v.shape for k, v in own_head.items()}:
        shapes = {k: tuple(v.shape) for k, v in head_state.items()}
        log.info("Pretrained head %s does not fit this model's %s head for %s outputs; "
                 "it is re-initialised.", shapes, model.head_name, _num_outputs(model))
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    body_missing = sorted(k for k in own if k not in state and not k.startswith("head."))
    unexpected = sorted(k for k in state if k not in own)
    if body_missing or unexpected:
        raise InvalidValueError(f"Weights from {source} do not fit {type(model).__name__} "
                         f"(norm={model.norm!r}): missing {body_missing[:8]}{' ...' if len(body_missing) > 8 else ''} "
                         f"({len(body_missing)} in all), unexpected {unexpected[:8]} ({len(unexpected)} in all). "
                         "Is it a checkpoint of another architecture?")
    shape_errors = [k for k, v in state.items() if v.shape != own[k].shape]
    if shape_errors:
        raise InvalidValueError(f"Weights from {source} have other shapes for {shape_errors[:8]}: "
                         "a checkpoint of another architecture?")
    model.load_state_dict(state, strict=False)
    return model


def _num_outputs(model: TResNet) -> Any:
    fc = getattr(model.head, "fc", None)
    return getattr(fc, "out_features", "?")


def create_model(name: str, num_classes: Optional[int] = None, pretrained: Pretrained = None,
                 head: str = "linear", norm: str = "inplace_abn", *, channels_last: bool = True,
                 head_args: Optional[dict[str, Any]] = None, **kwargs: Any) -> TResNet:
    """Build a TResNet, optionally with pretrained weights.

    Args:
        name: ``tresnet_m``, ``tresnet_l``, ``tresnet_xl`` or ``tresnet_v2_l``, optionally with a
            published tag (``tresnet_m.miil_in21k``), which implies ``pretrained=True``.
        num_classes: outputs of the head; ``None`` keeps the pretrained checkpoint's (or 1000).
        pretrained: ``None``/``False`` (random init), ``True`` (the default tag), a tag, a URL,
            a path to ``.safetensors``/``.pth``/``.pt``/``.ckpt``, or a folder in timm's hub layout:
            ``hf-hub:ORG/NAME``, ``local-dir:DIR`` or ``DIR`` (its config decides the head and,
            unless given, ``num_classes``; ``name`` may be that source itself, as in timm). A URL may end in
            ``#sha256=<64 hex digits>``: the download (and its cached copy) must have that SHA-256.
        head: a head name (``"linear"``, ...); ``head_args`` go to its constructor.
        norm: ``"inplace_abn"`` (default) or ``"bn"``.
        channels_last: NHWC weights and activations (inputs are converted in ``forward``).
        **kwargs: passed to :class:`TResNet` (``drop_path_rate``, ``in_chans``,
            ``residual_init``).

    Example:
        >>> model = create_model("tresnet_m", num_classes=10)
        >>> model(torch.rand(2, 3, 224, 224)).shape
        torch.Size([2, 10])
    """
    if is_hub_source(name) or is_hub_source(pretrained):
        return _from_hub_folder(name, pretrained, num_classes, head, head_args, norm=norm,
                                channels_last=channels_last, **kwargs)
    arch = _split_name(name)[0]
    source = pretrained_source(name, pretrained)
    cfg = PRETRAINED.get(source) if source else None
    if num_classes is None:
        num_classes = cfg.num_classes if cfg else 1000
    model = TResNet(ARCHS[arch], num_classes, norm=norm, head=head, head_args=head_args,
                    channels_last=channels_last, **kwargs)
    model.arch = arch
    if cfg is not None:
        model.pretrained_cfg = {"name": source, **asdict(cfg)}
    if source is not None:
        load_pretrained(model, source)
        if channels_last:
            model.to(memory_format=torch.channels_last)
    return model


def _from_hub_folder(name: str, pretrained: Pretrained, num_classes: Optional[int], head: str,
                     head_args: Optional[dict[str, Any]], **kwargs: Any) -> TResNet:
    """``create_model`` from a folder in timm's hub layout (``models/hub_folder.py``).

    The folder's config gives the architecture, the head (unless ``head``/``head_args`` are set)
    and the class count (unless ``num_classes`` is); a head that then differs from the folder's is
    freshly initialised, as with any pretrained weights.
    """
    source = str(pretrained if is_hub_source(pretrained) else name)
    folder = resolve_hub_folder(source)
    config = read_hub_config(folder)
    if not is_hub_source(name) and _split_name(name)[0] != config.architecture:
        raise InvalidValueError(f"Expected {source} to hold a {_split_name(name)[0]}, but its config says "
                                f"{config.architecture}. Fix: create_model({config.architecture!r}, pretrained=...).")
    state = read_hub_weights(folder)
    model = TResNet(ARCHS[config.architecture], 1, **kwargs)  # the body; its size is the architecture's
    check_head_fits(model.num_features, config.head, config.head_args, config.num_classes, state, folder)
    if head == "linear" and head_args is None:  # the defaults: the folder's head
        head, head_args = config.head, config.head_args
    model.reset_classifier(config.num_classes if num_classes is None else num_classes, head, **(head_args or {}))
    model.arch = config.architecture
    model.pretrained_cfg = {**model.pretrained_cfg, **config.pretrained_cfg, "name": source}
    load_state(model, state, source)
    if kwargs.get("channels_last", True):
        model.to(memory_format=torch.channels_last)
    return model
