"""The Hugging Face Hub: fetching the weights of a model repository in timm's layout.

``huggingface_hub`` does the work and reads its usual settings (``HF_ENDPOINT``, ``HF_HOME``,
``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``); this module turns its errors into one line naming the
repository and what went wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from torch import Tensor

from spikezoo.weights.checkpoint_file import CheckpointFileError, read_checkpoint
from spikezoo.weights.download import TIMEOUT_S
from spikezoo.weights.errors import DownloadError

__all__ = ["HUB_FILES", "fetch_hub_files", "load_hub_weights"]

#: The files of a model repository in timm's layout.
HUB_FILES = ("config.json", "model.safetensors")


def fetch_hub_files(
    repo_id: str, revision: str | None = None, cached_only: bool = False
) -> dict[str, Path]:
    """Local paths of :data:`HUB_FILES` of ``repo_id`` (from the cache with ``cached_only``).

    Raises :class:`DownloadError` when the repository or a file does not exist, the Hub cannot
    be reached, or (``cached_only``) the files are not in the cache.
    """
    paths = {}
    for filename in HUB_FILES:
        where = f"{repo_id}/{filename}" + (f"@{revision}" if revision else "")
        try:
            if not cached_only:
                _probe(repo_id, filename, revision, where)
            paths[filename] = Path(
                hf_hub_download(
                    repo_id,
                    filename,
                    revision=revision,
                    local_files_only=cached_only,
                    etag_timeout=TIMEOUT_S,
                )
            )
        except RepositoryNotFoundError:
            raise DownloadError(
                f"Hub repository {repo_id} does not exist (not published)"
            ) from None
        except (RevisionNotFoundError, EntryNotFoundError) as error:
            if cached_only and isinstance(error, LocalEntryNotFoundError):
                raise DownloadError(f"{where} is not in the Hugging Face cache") from None
            if isinstance(error, LocalEntryNotFoundError):
                raise DownloadError(f"cannot reach the Hub for {where} (offline?)") from None
            raise DownloadError(f"{where} does not exist on the Hub (not published)") from None
        except HfHubHTTPError as error:
            status = error.response.status_code if error.response is not None else "?"
            raise DownloadError(f"the Hub answered HTTP {status} for {where}") from None
    return paths


def _probe(repo_id: str, filename: str, revision: str | None, where: str) -> None:
    """Ask the Hub once whether the file exists: a network error fails at once, where
    ``hf_hub_download`` would retry it with back-off for about 20 s."""
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision), timeout=TIMEOUT_S)
    except HfHubHTTPError:
        raise
    except Exception as error:  # the transport's connection and timeout errors
        raise DownloadError(f"cannot reach the Hub for {where} ({type(error).__name__})") from None


def load_hub_weights(
    repo_id: str, architecture: str, revision: str | None = None, cached_only: bool = False
) -> dict[str, Tensor]:
    """The state dict of a Hub repository holding a model of ``architecture``.

    Its ``config.json`` must name ``architecture``. A weight file that cannot be read is
    removed from the cache (so no later call trusts it) and reported as a :class:`DownloadError`.
    """
    paths = fetch_hub_files(repo_id, revision, cached_only)
    try:
        found = json.loads(paths["config.json"].read_text()).get("architecture")
    except (json.JSONDecodeError, UnicodeDecodeError):
        _forget(paths["config.json"])
        raise DownloadError(
            f"{repo_id}/config.json is not valid JSON; it was removed from the cache"
        ) from None
    if found != architecture:
        raise DownloadError(
            f"{repo_id}/config.json is for architecture {found!r}, not {architecture!r}; "
            f"load it with timm.create_model('hf-hub:{repo_id}') or fix the repository"
        )
    try:
        return read_checkpoint(paths["model.safetensors"])
    except CheckpointFileError as error:
        _forget(paths["model.safetensors"])
        raise DownloadError(
            f"{repo_id}/model.safetensors {error.reason}; it was removed from the cache, try again"
        ) from None


def _forget(cached: Path) -> None:
    """Remove a file from the Hugging Face cache: its snapshot link and the blob behind it."""
    blob = cached.resolve()
    cached.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)
