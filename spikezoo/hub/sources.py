"""Where ``pretrained=True`` finds a model's weights, in order, cache first.

1. An explicit source: ``pretrained_cfg_overlay=dict(file=...)``, a ``local-dir:`` directory
   or an ``hf-hub:`` repository.
2. For a tag (``sdt_8_768.in1k``): spikezoo's cache (converted or installed weights), then the
   Hugging Face cache of the tag's Hub repository, then the Hub itself, then the authors' own
   file, which is downloaded, converted, checked and cached as safetensors with its provenance.
3. Otherwise one :class:`~spikezoo.hub.errors.WeightsNotFoundError` that lists what exists.

With ``HF_HUB_OFFLINE=1`` only the caches are used.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import constants as hf_constants
from timm.models import PretrainedCfg
from torch import Tensor

from spikezoo.hub import cache
from spikezoo.hub.authors import AUTHORS_FILES
from spikezoo.hub.checkpoint_file import CheckpointFileError, read_checkpoint
from spikezoo.hub.convert import convert_checkpoint
from spikezoo.hub.download import download, drive_download_url
from spikezoo.hub.errors import DownloadError, WeightsNotFoundError
from spikezoo.hub.remote import load_hub_weights

__all__ = ["WEIGHT_FILES", "fetch_authors_weights", "pretrained_state_dict", "weights_in_directory"]

#: The weight files of a model directory, in the order timm's ``local-dir:`` prefers them.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")


def pretrained_state_dict(cfg: PretrainedCfg, model_args: dict | None = None) -> dict[str, Tensor]:
    """The state dict ``cfg`` points at, read safely (never unpickled).

    ``model_args`` are the architecture arguments of the model being built; converting an
    authors' download builds the same architecture.
    """
    if cfg.state_dict is not None:
        return cfg.state_dict
    if cfg.source == "local-dir":
        return read_checkpoint(weights_in_directory(Path(cfg.file)))
    if cfg.file:
        return read_checkpoint(cfg.file)
    repo_id, _, revision = (cfg.hf_hub_id or "").partition("@")
    if cfg.source == "hf-hub":
        return load_hub_weights(
            repo_id, cfg.architecture, revision or None, hf_constants.HF_HUB_OFFLINE
        )
    return _tag_weights(cfg, repo_id, revision or None, model_args or {})


def weights_in_directory(directory: Path) -> Path:
    """The weight file of a converted model directory (``model.safetensors`` first)."""
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointFileError(directory, f"holds none of the weight files {list(WEIGHT_FILES)}")


def _tag_weights(
    cfg: PretrainedCfg, repo_id: str, revision: str | None, model_args: dict
) -> dict[str, Tensor]:
    name = f"{cfg.architecture}.{cfg.tag}"
    installed = cache.installed_dir(name) / "model.safetensors"
    if installed.is_file():
        return read_checkpoint(installed)
    tried = []
    if repo_id:
        try:
            return load_hub_weights(repo_id, cfg.architecture, revision, cached_only=True)
        except DownloadError:
            pass
    if hf_constants.HF_HUB_OFFLINE:
        offline = "not cached, and HF_HUB_OFFLINE=1 forbids downloads"
        raise WeightsNotFoundError(_not_found(name, repo_id, [offline]))
    if repo_id:
        try:
            return load_hub_weights(repo_id, cfg.architecture, revision)
        except DownloadError as error:
            tried.append(str(error))
    authors = AUTHORS_FILES.get(name)
    if authors is not None and authors.drive_id is not None:
        try:
            # the authors' file has the tag's head, whatever head the caller asked for
            args = dict(model_args, num_classes=cfg.num_classes)
            return read_checkpoint(fetch_authors_weights(name, args) / "model.safetensors")
        except DownloadError as error:
            tried.append(f"authors' file: {error}")
    raise WeightsNotFoundError(_not_found(name, repo_id, tried))


def fetch_authors_weights(name: str, model_args: dict | None = None) -> Path:
    """Download the authors' file of ``model.tag``, convert it and install it in the cache.

    The file goes to a staging directory inside the cache, is checked against the recorded
    sha256 (when known), converted (read safely, filtered, loaded strictly, one finite forward
    pass) and only then renamed into place; on any failure nothing is left behind.
    """
    authors = AUTHORS_FILES[name]
    url = drive_download_url(authors.drive_id)
    with cache.staging_dir() as staging:
        checkpoint = staging / f"{name}.authors-checkpoint"
        download(url, checkpoint, authors.sha256)
        try:
            convert_checkpoint(checkpoint, name, staging / "converted", model_args, url)
        except CheckpointFileError as error:
            raise DownloadError(f"the download of {url} {error.reason}") from None
        except ValueError as error:  # does not fit the architecture, or gives non-finite logits
            problem = " ".join(str(error).replace(str(checkpoint), "it").split())
            raise DownloadError(f"the download of {url} cannot be used: {problem}") from None
        return cache.install(staging / "converted", name)


def _not_found(name: str, repo_id: str, tried: list[str]) -> str:
    authors = AUTHORS_FILES.get(name)
    where = f"the authors' file is at {authors.page}" if authors else "no authors' weights"
    command = f"spikezoo convert FILE --model {name} --out DIR --install"
    tried_text = "; ".join(tried) or f"not cached, and {repo_id or 'no Hub repository'} not asked"
    return (
        f"no weights for {name} ({tried_text}); {where}; convert a downloaded file with '{command}'"
    )
