"""Before anything slow, check that every file a run needs is on disk or can be downloaded now.

Without this check an offline run failed on one missing piece at a time, each after its own wait
(the hub client alone retries for about 23 s). Here the pretrained weights (a published tag, a URL
or a file) and the dataset files are all looked up in seconds, before Lightning is even imported,
and whatever is missing is listed in one error, each piece with its fix. Nothing is downloaded
here: a piece whose server answers is left for the run to fetch.

Plain Python, like the model and data code it asks.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from ..errors import MissingInputError
from ..fetch.download import MissingInput, unreachable_urls
from ..data.registry import missing_dataset
from ..models.factory import pretrained_source
from ..models.weights import missing_weights


class MissingInputsError(MissingInputError):
    """Files the run needs are neither on disk nor downloadable now; the message lists them all."""


def check_inputs(config: Mapping[str, Any], weights: bool = True) -> None:
    """Raise :class:`MissingInputsError` listing every file the run of ``config`` needs that is
    not on disk and cannot be downloaded now (``HF_HUB_OFFLINE=1``, downloads off, or no answer
    from the server). ``config`` is a LightningCLI config; only its ``model`` and ``data`` count.

    ``weights=False`` skips the pretrained weights: a checkpoint given with ``--ckpt_path``
    brings hyperparameters of its own, so the config may not say which weights the run loads.
    """
    pieces = [_weights_piece(_section(config, "model")) if weights else None,
              _data_piece(_section(config, "data"))]
    missing = [piece for piece in pieces if piece is not None]
    failures = unreachable_urls(piece.url for piece in missing if piece.url)
    problems = [(piece, failures.get(piece.url or "")) for piece in missing
                if piece.url is None or piece.url in failures]
    if problems:
        raise MissingInputsError(_message(problems))


def _section(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    section = config.get(name)
    return section if isinstance(section, Mapping) else {}


def _weights_piece(model: Mapping[str, Any]) -> Optional[MissingInput]:
    if not model.get("arch"):
        return None
    try:
        source = pretrained_source(str(model["arch"]), model.get("pretrained"))
    except ValueError:
        return None  # a value the model refuses: building it names the problem and the fix
    return missing_weights(source) if source else None


def _data_piece(data: Mapping[str, Any]) -> Optional[MissingInput]:
    if not data.get("dataset"):
        return None
    try:
        # download defaults to on, as in ImageDataModule
        options = data.get("dataset_options")
        return missing_dataset(str(data["dataset"]), data.get("root"), bool(data.get("download", True)),
                               dict(options) if isinstance(options, Mapping) else None)
    except ValueError:
        return None  # an unknown dataset or a missing root: the DataModule names it and the fix


def _message(problems: list[tuple[MissingInput, Optional[str]]]) -> str:
    count = len(problems)
    lines = [f"This run needs {count} thing{'s' if count > 1 else ''} that {'are' if count > 1 else 'is'} "
             "not on this machine and cannot be downloaded now:"]
    for number, (piece, failure) in enumerate(problems, 1):
        body = [piece.what]
        if failure is not None:
            body.append(f"Downloading failed ({failure}); this machine may be offline.")
        if piece.fix:
            body.append(piece.fix)
        lines.append(f"{number}. " + "\n".join(body).replace("\n", "\n   "))
    return "\n".join(lines)
