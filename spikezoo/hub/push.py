"""Pushing a converted model directory to the Hugging Face Hub.

``huggingface_hub`` does the work and reads its usual settings (``HF_ENDPOINT``, ``HF_TOKEN``
or the token of ``hf auth login``); this module turns its errors into one line naming the
repository and what to do.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError

from spikezoo.weights import HUB_FILES, WeightsError

__all__ = ["PublishError", "hub_token", "push_folder"]


class PublishError(WeightsError):
    """Pushing or publishing weights failed: no token, a manifest entry that does not match."""


def hub_token(token: str | None, repo_id: str) -> str:
    """``token``, else ``HF_TOKEN`` or the token of ``hf auth login``; a clear error if none."""
    token = token or get_token()
    if not token:
        raise PublishError(
            f"no Hugging Face token to push {repo_id}: run 'hf auth login' or set HF_TOKEN"
        )
    return token


def push_folder(
    folder: str | Path, repo_id: str, token: str | None = None, private: bool = False
) -> str:
    """Upload a converted model directory to ``repo_id`` in one commit; returns its URL.

    The token is ``token``, else ``HF_TOKEN`` or the one saved by ``hf auth login``. The
    repository is created when missing.
    """
    folder = Path(folder)
    missing = [name for name in HUB_FILES if not (folder / name).is_file()]
    if missing:
        raise PublishError(
            f"{folder} is not a converted model directory (no {', '.join(missing)}); "
            "make one with 'spikezoo convert'"
        )
    api = HfApi(token=hub_token(token, repo_id))
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=f"Upload {repo_id.split('/')[-1]} converted by spikezoo",
        )
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise PublishError(f"pushing {repo_id} failed: the Hub answered HTTP {status}") from None
    except OSError as error:
        raise PublishError(f"pushing {repo_id} failed: cannot reach the Hub ({error})") from None
    return commit.commit_url
