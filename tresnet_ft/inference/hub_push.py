"""Push a checkpoint to the Hugging Face hub: export the folder (:func:`export_hub_folder`), then
upload it with ``huggingface_hub`` (``create_repo(exist_ok=True)`` + ``upload_folder``, as timm's
``push_to_hub`` does).

The folder is written first and kept: when there is no token or no network, the error names it
and the command that uploads it later, so nothing has to be exported twice.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import InvalidValueError, UnavailableError
from ..fetch.packages import import_package
from ..models.hub_folder import is_hub_source, split_repo_id
from .hub_export import HubExportReport, export_hub_folder

log = logging.getLogger(__name__)


@dataclass
class PushReport:
    """What :func:`push_to_hub` did: the folder it wrote (``export``; None when an exported
    folder was pushed as is) and uploaded, and where to."""

    folder: Path
    repo_id: str
    url: str
    private: bool
    export: Optional[HubExportReport]

    def __str__(self) -> str:
        visibility = "private" if self.private else "public (unless the repo already existed as private)"
        return (f"Uploaded {self.folder} to {self.url} ({visibility}). Load it with "
                f"tresnet_ft.load_classifier('hf-hub:{self.repo_id}') or `tresnet-ft predict hf-hub:{self.repo_id} IMAGES`.")


def default_folder(checkpoint: str | Path) -> Path:
    """Where ``push`` writes the folder without ``-o``: beside the checkpoint, ``<stem>-hf``."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}-hf")


def upload_command(repo_id: str, folder: Path, private: bool) -> str:
    """The ``hf`` command that uploads ``folder`` to the root of ``repo_id`` later."""
    return f"hf upload {repo_id} {folder} .{' --private' if private else ''}"


def push_to_hub(checkpoint: str | Path, repo_id: str, private: bool = False,
                folder: Optional[str | Path] = None) -> PushReport:
    """Export ``checkpoint`` into ``folder`` (default :func:`default_folder`) and upload it to ``repo_id``.

    ``checkpoint`` may be a folder exported before: without ``folder`` it is uploaded as it is.
    The token comes from where ``huggingface_hub`` keeps it (``HF_TOKEN``, ``hf auth login``).

    Raises:
        InvalidValueError: a malformed ``repo_id``; what :func:`export_hub_folder` raises.
        UnavailableError: no token, no network, or the hub refused; the message names the folder
            (already written) and the command that uploads it later.
    """
    repo_id = _checked_repo_id(repo_id)
    if is_hub_source(checkpoint) and folder is None:
        export, target = None, Path(str(checkpoint))
    else:
        target = Path(folder) if folder is not None else default_folder(checkpoint)
        export = export_hub_folder(checkpoint, target, repo_id=repo_id)
    hub = import_package("huggingface_hub", "Pushing to the Hugging Face hub")
    later = (f"The folder {target} is written; upload it later with `{upload_command(repo_id, target, private)}` (after "
             f"`hf auth login`) or `tresnet-ft push {target} --repo {repo_id}{' --private' if private else ''}`")
    token = hub.get_token()
    if not token:
        raise UnavailableError(f"No Hugging Face token: log in with `hf auth login` or set HF_TOKEN. {later}.")
    _check_reachable(later)
    try:
        api = hub.HfApi(token=token, library_name="tresnet-ft")
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
        info = api.upload_folder(repo_id=repo_id, folder_path=str(target), repo_type="model",
                                 commit_message="Upload a TResNet fine-tuned with tresnet-ft")
    except Exception as err:  # the client raises HTTP, connection and validation errors of many types
        reason = (str(err).splitlines() or [type(err).__name__])[0][:160]
        raise UnavailableError(f"Could not upload to {repo_id} ({type(err).__name__}: {reason}). {later}.") from None
    report = PushReport(target, repo_id, str(getattr(info, "repo_url", "") or f"hf.co/{repo_id}"), private, export)
    log.info("%s", report)
    return report


def _checked_repo_id(repo_id: str) -> str:
    repo, revision = split_repo_id(repo_id)
    if revision is not None:
        raise InvalidValueError(f"Expected --repo to be ORG/NAME, but got {repo_id!r}: a push names a repo, "
                                f"not a revision. Fix: --repo {repo}.")
    return repo


def _check_reachable(later: str) -> None:
    """Fail in seconds, not after the client's retries, when the hub cannot or may not be reached."""
    from huggingface_hub import constants

    from ..fetch.download import unreachable_urls

    if constants.HF_HUB_OFFLINE:
        raise UnavailableError(f"HF_HUB_OFFLINE=1 forbids uploading. {later}.")
    failure = unreachable_urls([constants.ENDPOINT]).get(constants.ENDPOINT)
    if failure is not None:
        raise UnavailableError(f"Could not reach {constants.ENDPOINT} ({failure}). {later}.")
