"""Pretrained weights: the published tag table, fetching, safe reading, and key conversion.

Three checkpoint formats are recognised and brought to timm's keys:

* timm / model hub (``body.conv1.conv.weight``, ``head.fc.*``): used as is;
* the original TResNet repository (``body.conv1.0.weight``, ``body.layer2.0.conv1.0.0.weight``,
  maybe wrapped in ``model`` or ``state_dict``): renamed, blur filters dropped, and InPlace-ABN
  scales converted to BatchNorm's convention with ``|w| + 1e-5``;
* this project's Lightning checkpoints (``state_dict`` with a ``model.`` prefix).

Nothing is ever unpickled beyond tensors: ``torch.load(weights_only=True)`` or safetensors, and
nothing unpacks beyond bounds (:func:`read_checkpoint`). Downloads are cached per URL and checked
against a checksum where one is known (``#sha256=`` on a URL; the hub's content hash for a tag).
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import pickle
import re
import urllib.error
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

import torch
from ..errors import InvalidValueError, MissingInputError, UnavailableError

if TYPE_CHECKING:
    from ..fetch.download import MissingInput

log = logging.getLogger(__name__)

ORIGINAL_IABN_EPS = 1e-5
WEIGHTS_CACHE = Path(os.environ.get("TRESNET_FT_WEIGHTS", Path.home() / ".cache" / "tresnet-ft" / "weights"))
MAX_CHECKPOINT_BYTES_ENV = "TRESNET_FT_MAX_CHECKPOINT_BYTES"
# TResNet-XL's last.ckpt (weights, EMA, AdamW moments) unpacks to ~1.3 GB: 16 GiB leaves room for big heads.
DEFAULT_MAX_CHECKPOINT_BYTES = 16 << 30
# torch.save stores records uncompressed (they unpack to about the file's size); far more is a zip bomb.
MAX_INFLATION = 4


class UnsafeCheckpointError(InvalidValueError):
    """The file holds pickled Python objects beyond tensors, which could run code when loaded."""


class WeightsUnavailableError(UnavailableError):
    """Pretrained weights could not be fetched (offline, or no such file)."""


class CorruptCheckpointError(InvalidValueError):
    """The file is truncated or not a checkpoint at all (an interrupted copy, a disk that filled up)."""


class CheckpointTooLargeError(InvalidValueError):
    """The file's records would unpack to more memory than allowed (see :func:`read_checkpoint`)."""


class ChecksumMismatchError(InvalidValueError):
    """A downloaded or cached weights file does not have the content its checksum promises."""


@dataclass(frozen=True)
class PretrainedCfg:
    """One published checkpoint on the model hub, with the preprocessing it was trained with."""

    hub_id: str
    input_size: int = 224
    num_classes: int = 1000
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    top1: Optional[float] = None  # ImageNet-1k top-1 as reported (None: not a 1k classifier / not given)


# arch.tag -> published checkpoint. The first tag listed for an arch is its default.
PRETRAINED: dict[str, PretrainedCfg] = {
    "tresnet_m.miil_in21k_ft_in1k": PretrainedCfg("timm/tresnet_m.miil_in21k_ft_in1k", top1=83.1),
    "tresnet_m.miil_in21k": PretrainedCfg("timm/tresnet_m.miil_in21k", num_classes=11221),
    "tresnet_m.miil_in1k": PretrainedCfg("timm/tresnet_m.miil_in1k", top1=80.8),
    "tresnet_m.miil_in1k_448": PretrainedCfg("timm/tresnet_m.miil_in1k_448", input_size=448),
    "tresnet_l.miil_in1k": PretrainedCfg("timm/tresnet_l.miil_in1k", top1=81.5),
    "tresnet_l.miil_in1k_448": PretrainedCfg("timm/tresnet_l.miil_in1k_448", input_size=448),
    "tresnet_xl.miil_in1k": PretrainedCfg("timm/tresnet_xl.miil_in1k", top1=82.1),
    "tresnet_xl.miil_in1k_448": PretrainedCfg("timm/tresnet_xl.miil_in1k_448", input_size=448),
    "tresnet_v2_l.miil_in21k_ft_in1k": PretrainedCfg("timm/tresnet_v2_l.miil_in21k_ft_in1k", top1=83.9),
    "tresnet_v2_l.miil_in21k": PretrainedCfg("timm/tresnet_v2_l.miil_in21k", num_classes=11221),
}


def list_pretrained(arch: Optional[str] = None) -> list[str]:
    """Published ``arch.tag`` names, optionally only those of ``arch``."""
    return [name for name in PRETRAINED if arch is None or name.split(".")[0] == arch]


def default_tag(arch: str) -> str:
    """The tag ``pretrained=True`` picks for ``arch``."""
    names = list_pretrained(arch)
    if not names:
        raise InvalidValueError(f"No pretrained weights are published for {arch!r}.")
    return names[0].split(".", 1)[1]


# --- fetching -------------------------------------------------------------------------------

def _offline_message(what: str, where: str) -> str:
    return (f"Could not fetch {what}: no network, or it is not in the cache ({where}). "
            "Fix: connect once to fill the cache, or download the file elsewhere and pass its path, "
            "e.g. create_model('tresnet_m', 10, pretrained='/path/to/model.safetensors') or "
            "--model.pretrained /path/to/model.safetensors.")


HUB_FILE = "model.safetensors"


def download_from_hub(name: str) -> Path:
    """Fetch ``model.safetensors`` of the published ``arch.tag`` into the Hugging Face cache.

    Honours ``HF_HUB_OFFLINE=1`` (cache only). When the hub cannot be reached the error comes at
    once, not after the hub client's retries (about 23 s).
    """
    import huggingface_hub
    from huggingface_hub import constants

    cfg = PRETRAINED[name]
    where = f"hub id {cfg.hub_id}, cache folder {constants.HF_HUB_CACHE}"
    missing = _missing_hub_weights(name)
    if missing is not None and missing.url is not None:  # not cached, and the network may be tried
        from ..fetch.download import unreachable_urls

        failure = unreachable_urls([missing.url]).get(missing.url)
        if failure is not None:
            raise WeightsUnavailableError(_offline_message(f"pretrained weights {name!r}", where)
                                          + f" ({constants.ENDPOINT}: {failure})")
    try:
        path = Path(huggingface_hub.hf_hub_download(cfg.hub_id, HUB_FILE))
    except Exception as err:  # the hub raises many types for "offline", "no cache", "no repo"
        raise WeightsUnavailableError(_offline_message(f"pretrained weights {name!r}", where)
                                      + f" ({type(err).__name__})") from None
    return _verify_hub_file(path, name)


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_hub_file(path: Path, name: str) -> Path:
    """``path`` once its content matches the hash the hub published for it: the Hugging Face cache
    links ``snapshots/<revision>/model.safetensors`` to ``blobs/<sha256 of the content>`` (the LFS
    object id). Without such a link (a copy; no symlinks) there is nothing to compare with."""
    blob = path.resolve()
    if not _SHA256_HEX.fullmatch(blob.name):
        return path
    actual = file_sha256(blob)
    if actual != blob.name:
        raise ChecksumMismatchError(
            f"The cached file {path} of pretrained weights {name!r} has SHA-256 {actual}, but the hub published "
            f"{blob.name}: it was damaged or replaced after the download. Fix: delete {blob} and run again to "
            "download it afresh.")
    return path


def _split_checksum(url: str) -> tuple[str, Optional[str]]:
    """``url`` without a ``#sha256=<hex>`` fragment, and that hex digest (None: no checksum given)."""
    source, _, fragment = url.partition("#")
    if not fragment:
        return source, None
    digest = fragment[len("sha256="):].lower() if fragment.startswith("sha256=") else ""
    if not _SHA256_HEX.fullmatch(digest):
        raise InvalidValueError(f"Expected a URL's fragment to be '#sha256=<64 hex digits>' (the file's checksum), "
                                f"but got '#{fragment[:80]}' in {source}.")
    return source, digest


def url_cache_path(url: str, cache_dir: Path | None = None) -> Path:
    """Where :func:`download_url` keeps the file of ``url``: ``<cache>/<stem>-<key><suffix>``
    (``w.pth`` → ``w-<key>.pth``), ``key`` being the first 16 hex digits of the SHA-256 of the whole
    URL (``#sha256=`` left out): two URLs that end in the same file name never share a cached file.
    """
    cache_dir = WEIGHTS_CACHE if cache_dir is None else Path(cache_dir)
    source, _ = _split_checksum(url)
    # Only the URL path's last part, in safe characters: it must stay one name inside the folder.
    name = Path(re.sub(r"[^A-Za-z0-9._-]", "_", Path(urllib.parse.urlsplit(source).path).name).lstrip(".") or "weights")
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    return cache_dir / f"{name.stem}-{key}{name.suffix}"


def download_url(url: str, cache_dir: Path | None = None) -> Path:
    """Fetch a weights file from ``url`` into ``cache_dir`` (once), with a progress bar.

    ``cache_dir`` defaults to ``$TRESNET_FT_WEIGHTS`` or ``~/.cache/tresnet-ft/weights``; each URL
    has its own file there (:func:`url_cache_path`). Bytes go to ``<name>.part`` and the file
    appears only once complete; the next call resumes an interrupted one (HTTP Range) or restarts.
    With a ``#sha256=<hex>`` fragment, a cached file without that SHA-256 is fetched again and a
    download without it is removed and refused.
    """
    # Plain Python, imported late: `import tresnet_ft.models` stays light.
    from ..fetch.download import download_file

    source, sha256 = _split_checksum(url)
    target = url_cache_path(url, cache_dir)
    if target.exists():
        if sha256 is None or file_sha256(target) == sha256:
            return target
        log.warning("The cached download %s does not have the SHA-256 %s; downloading it again.", target, sha256)
        target.unlink()
    try:
        path = download_file(source, target, md5=None, progress=True)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:  # OSError: ConnectionError, timeouts
        raise WeightsUnavailableError(_offline_message(f"weights from {source}", str(target.parent))
                                      + f" ({err})") from None
    actual = file_sha256(path) if sha256 is not None else None
    if actual != sha256:
        path.unlink()
        raise ChecksumMismatchError(f"Checksum mismatch for {source}: expected SHA-256 {sha256}, but the download has "
                                    f"{actual}. It was removed. Fix: check the URL and its #sha256= value, or "
                                    "download the file elsewhere and pass its path.")
    return path


def missing_weights(source: str) -> Optional[MissingInput]:
    """What keeps ``source`` (a published ``arch.tag``, a URL or a file) from loading without the
    network: a :class:`~tresnet_ft.data.download.MissingInput`, or None when it is on disk.
    Touches no network."""
    from ..fetch.download import MissingInput
    from .hub_folder import is_hub_source, missing_hub_folder  # late: hub_folder imports this module

    if source in PRETRAINED:
        return _missing_hub_weights(source)
    if is_hub_source(source):
        return missing_hub_folder(source)
    if "://" in source:
        target = url_cache_path(source)
        return None if target.exists() else MissingInput(
            f"Weights {source} are not in the download cache {target.parent}.",
            "Fix: download the file elsewhere and pass its path: --model.pretrained /path/to/file.", source)
    path = Path(source).expanduser()
    return None if path.is_file() else MissingInput(
        f"Weights file {path} does not exist.",
        "Fix: check the path, or pass a published tag instead (tresnet-ft models lists them).")


def _missing_hub_weights(name: str) -> Optional[MissingInput]:
    import huggingface_hub
    from huggingface_hub import constants

    from ..fetch.download import MissingInput

    hub_id = PRETRAINED[name].hub_id
    if isinstance(huggingface_hub.try_to_load_from_cache(hub_id, HUB_FILE), str):
        return None
    offline = constants.HF_HUB_OFFLINE  # the user said not to try the network: we do not
    what = (f"Could not fetch pretrained weights {name!r}: not in the Hugging Face cache {constants.HF_HUB_CACHE}"
            + (", and HF_HUB_OFFLINE=1 forbids downloading." if offline else "."))
    fix = (f"Fix: run once with network access{' and HF_HUB_OFFLINE unset' if offline else ''} to fill the "
           f"cache, or download {HUB_FILE} from {constants.ENDPOINT}/{hub_id} elsewhere and pass "
           f"--model.pretrained /path/to/{HUB_FILE}.")
    return MissingInput(what, fix, None if offline else f"{constants.ENDPOINT}/{hub_id}")


# --- reading --------------------------------------------------------------------------------

def read_checkpoint(path: str | os.PathLike) -> Mapping[str, Any]:
    """Load a ``.safetensors``, ``.pth``, ``.pt`` or ``.ckpt`` file without running any code.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file needs arbitrary unpickling (possibly malicious).
        CorruptCheckpointError: the file is truncated or not a checkpoint.
        CheckpointTooLargeError: its records would unpack to more than :data:`MAX_INFLATION` times
            the file's size, or to more than ``$TRESNET_FT_MAX_CHECKPOINT_BYTES`` (default 16 GiB).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"Weights file {path} does not exist. Check the path, or pass a "
                                f"published tag instead (see tresnet_ft.list_pretrained()).")
    if path.suffix != ".safetensors":  # safetensors maps the file itself: it takes no more than its size
        check_unpacked_size(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"Refusing to load {path}: it contains pickled Python objects beyond tensors, and "
            "unpickling them could run arbitrary code. Fix: if you trust its author, re-save just "
            "the state dict (torch.save(model.state_dict(), ...)) or convert it to .safetensors. "
            f"Details: {str(err).splitlines()[0]}") from None
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 (torch: RuntimeError/EOFError; safetensors: SafetensorError)
        first_line = (str(err).splitlines() or [type(err).__name__])[0][:160]
        raise CorruptCheckpointError(
            f"Could not read {path} ({path.stat().st_size} bytes): it is truncated or not a checkpoint "
            f"({type(err).__name__}: {first_line}). Fix: copy or download it again; a file in a "
            "download cache can simply be deleted.") from None


def max_checkpoint_bytes() -> int:
    """What one checkpoint may unpack to: ``$TRESNET_FT_MAX_CHECKPOINT_BYTES``, else 16 GiB."""
    raw = os.environ.get(MAX_CHECKPOINT_BYTES_ENV, "").strip() or str(DEFAULT_MAX_CHECKPOINT_BYTES)
    value = int(raw) if raw.isdigit() else 0
    if value < 1:
        raise InvalidValueError(f"Expected the environment variable {MAX_CHECKPOINT_BYTES_ENV} to be a positive "
                                f"integer (bytes), but got {raw!r}. Fix: set it to e.g. "
                                f"{DEFAULT_MAX_CHECKPOINT_BYTES} (the default, 16 GiB), or unset it.")
    return value


def check_unpacked_size(path: Path) -> None:
    """Refuse a ``torch.save`` zip whose records declare more bytes than it may take in memory:
    ``torch.load`` allocates each at its declared size, and a deflated record of zeros could take
    1000x the file's size. Other formats (the legacy ``torch.save`` stream) go to ``torch.load``."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):  # torch.load explains a damaged file
        return
    size, limit = path.stat().st_size, max_checkpoint_bytes()
    if unpacked > MAX_INFLATION * size + (1 << 20):  # 1 MiB: slack for tiny files
        raise CheckpointTooLargeError(
            f"Refusing to load {path}: its records would unpack to {unpacked:,} bytes from a {size:,}-byte file "
            f"({unpacked / max(size, 1):,.0f}x; torch.save stores records uncompressed, so at most "
            f"{MAX_INFLATION}x is accepted). It is a decompression bomb or was not written by torch.save. "
            "Fix: use a checkpoint written by torch.save or tresnet-ft.")
    if unpacked > limit:
        raise CheckpointTooLargeError(
            f"Refusing to load {path}: its records would unpack to {unpacked:,} bytes, above the limit of "
            f"{limit:,} bytes ({MAX_CHECKPOINT_BYTES_ENV}). Fix: if you trust the file and have the memory, "
            f"raise it, e.g. {MAX_CHECKPOINT_BYTES_ENV}={2 * max(unpacked, limit)}.")


def _unwrap(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Find the state dict inside a training checkpoint (``state_dict`` / ``model`` wrappers)."""
    for key in ("state_dict", "model", "state_dict_ema"):
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping):
            return _unwrap(inner)
    tensors = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise InvalidValueError(f"Expected a state dict of tensors, but found keys {sorted(checkpoint)[:10]}.")
    return tensors


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a wrapper prefix (``model.``, ``module.``, ...) in front of ``body.``."""
    anchor = next((k for k in state if re.search(r"(^|\.)body\.conv1\.", k)), None)
    if anchor is None:
        raise InvalidValueError("Expected TResNet weights (keys like 'body.conv1.conv.weight'), but none of "
                         f"the {len(state)} keys look like it, e.g. {sorted(state)[:5]}.")
    prefix = anchor[: anchor.index("body.")]
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


_ORIGINAL_RENAMES = [
    (re.compile(r"conv(\d+)\.0\.0\."), r"conv\1.conv."),
    (re.compile(r"conv(\d+)\.0\.1\."), r"conv\1.bn."),
    (re.compile(r"conv(\d+)\.0\."), r"conv\1.conv."),
    (re.compile(r"conv(\d+)\.1\."), r"conv\1.bn."),
    (re.compile(r"downsample\.(\d+)\.0\."), r"downsample.\1.conv."),
    (re.compile(r"downsample\.(\d+)\.1\."), r"downsample.\1.bn."),
]


def _convert_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original TResNet repository keys -> timm keys; InPlace-ABN scales -> BatchNorm scales."""
    out = {}
    for key, value in state.items():
        if key.endswith(".filt"):  # the fixed blur kernel; ours is rebuilt, not loaded
            continue
        for pattern, replacement in _ORIGINAL_RENAMES:
            key = pattern.sub(replacement, key)
        if key.endswith("bn.weight"):
            value = value.abs() + ORIGINAL_IABN_EPS  # InPlace-ABN uses scale = |w| + eps
        out[key] = value
    return out


def to_timm_keys(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Any supported checkpoint (see module docstring) -> a state dict with timm's keys."""
    state = _strip_prefix(_unwrap(checkpoint))
    if "body.conv1.0.weight" in state:
        state = _convert_original(state)
    return state
