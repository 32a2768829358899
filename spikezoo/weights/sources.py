"""Where ``pretrained=True`` finds a model's weights, in order, caches first.

1. An explicit source: ``pretrained_cfg_overlay=dict(file=...)``, a ``local-dir:`` directory
   or an ``hf-hub:`` repository.
2. For a tag (``sdt_8_768.in1k``): spikezoo's cache (weights installed by ``spikezoo convert
   --install``, then the authors' file downloaded before), the Hugging Face cache of the tag's
   Hub repository, the Hub itself, then the authors' own file (the cfg's ``authors_file``),
   which is downloaded and kept in the cache once the model being built has accepted it.
3. Otherwise one :class:`~spikezoo.weights.WeightsNotFoundError` that lists what exists.

With ``HF_HUB_OFFLINE=1`` only the caches are used. Nothing here builds a model: the state dict
is handed to the builder, whose ``checkpoint_filter_fn`` maps it onto the model being built.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from timm.models import PretrainedCfg
from torch import Tensor

from spikezoo.weights import cache
from spikezoo.weights.authors import authors_weights
from spikezoo.weights.checkpoint_file import CheckpointFileError, read_checkpoint
from spikezoo.weights.errors import DownloadError, WeightsNotFoundError
from spikezoo.weights.hf_hub import load_hub_weights

__all__ = [
    "WEIGHT_FILES",
    "PretrainedWeights",
    "pretrained_weights",
    "weight_sources",
    "weights_in_directory",
]

#: The weight files of a model directory, in the order timm's ``local-dir:`` prefers them.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")


@dataclass(frozen=True)
class PretrainedWeights:
    """A state dict for ``pretrained=True`` and where it came from.

    ``downloaded`` marks the authors' file fetched just now: it has never been loaded into a
    model, so the builder checks it (one forward pass) before the ``with`` block accepts it.
    """

    state_dict: dict[str, Tensor]
    source: str
    downloaded: bool = False


@contextmanager
def pretrained_weights(cfg: PretrainedCfg) -> Iterator[PretrainedWeights]:
    """The weights ``cfg`` points at, read safely (never unpickled), for a ``with`` block that
    loads them into the model being built.

    A fresh download of the authors' file enters spikezoo's cache only when the block ends
    without an exception; otherwise it is discarded and the block's exception goes on as it is.
    Raises :class:`WeightsNotFoundError` (one line: what was tried, where the authors' file is,
    the ``spikezoo convert`` command) when a tag has no weights anywhere.
    """
    if cfg.state_dict is not None:
        yield PretrainedWeights(cfg.state_dict, "pretrained_cfg state_dict")
        return
    if cfg.source == "local-dir":
        path = weights_in_directory(Path(cfg.file))
        yield PretrainedWeights(read_checkpoint(path), str(path))
        return
    if cfg.file:
        yield PretrainedWeights(read_checkpoint(cfg.file), str(cfg.file))
        return
    repo_id, _, revision = (cfg.hf_hub_id or "").partition("@")
    if cfg.source == "hf-hub":
        offline = hf_constants.HF_HUB_OFFLINE
        state_dict = load_hub_weights(repo_id, cfg.architecture, revision or None, offline)
        yield PretrainedWeights(state_dict, f"hf-hub:{cfg.hf_hub_id}")
        return
    name = f"{cfg.architecture}.{cfg.tag}"
    tried = []
    found = _cached_or_published(cfg, name, repo_id, revision or None, tried)
    if found is not None:
        yield found
        return
    authors = getattr(cfg, "authors_file", None)
    if authors is None or authors.drive_id is None:
        raise WeightsNotFoundError(_not_found(cfg, name, repo_id, tried))
    try:
        with authors_weights(name, authors) as (state_dict, url):
            yield PretrainedWeights(state_dict, url, downloaded=True)
    except DownloadError as error:
        tried.append(f"authors' file: {error}")
        raise WeightsNotFoundError(_not_found(cfg, name, repo_id, tried)) from None


def weight_sources(cfg: PretrainedCfg) -> list[str]:
    """Where the weights of a tag are, as far as spikezoo knows without the network: installed
    in spikezoo's cache, the authors' file (downloaded before, downloaded by ``pretrained=True``,
    or on a page to download by hand) and the Hugging Face cache of the tag's Hub repository.

    Empty when the tag has no weights anywhere: the authors released none, and nobody has
    installed or published any (the Hub repository is asked only by ``pretrained=True``).
    """
    name = f"{cfg.architecture}.{cfg.tag}"
    sources = []
    if (cache.installed_dir(name) / "model.safetensors").is_file():
        sources.append(f"the copy installed in {cache.installed_dir(name)}")
    authors = getattr(cfg, "authors_file", None)
    if (cache.authors_dir(name) / "model.safetensors").is_file():
        sources.append(f"the authors' file downloaded into {cache.authors_dir(name)}")
    elif authors is not None and authors.drive_id is not None:
        sources.append(f"the authors' file {authors.page}")
    elif authors is not None:
        sources.append(f"the authors' page {authors.where()}, to download from by hand")
    repo_id, _, revision = (cfg.hf_hub_id or "").partition("@")
    if repo_id:
        cached = try_to_load_from_cache(repo_id, "model.safetensors", revision=revision or None)
        if isinstance(cached, str):
            sources.append(f"the Hugging Face cache of {repo_id}")
    return sources


def weights_in_directory(directory: Path) -> Path:
    """The weight file of a converted model directory (``model.safetensors`` first)."""
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointFileError(directory, f"holds none of the weight files {list(WEIGHT_FILES)}")


def _cached_or_published(
    cfg: PretrainedCfg, name: str, repo_id: str, revision: str | None, tried: list[str]
) -> PretrainedWeights | None:
    """The tag's weights from spikezoo's cache, the Hugging Face cache or the Hub; ``None``
    when they are not there (``tried`` gets the reasons)."""
    for directory in (cache.installed_dir(name), cache.authors_dir(name)):
        if (directory / "model.safetensors").is_file():
            path = directory / "model.safetensors"
            return PretrainedWeights(read_checkpoint(path), str(path))
    if repo_id:
        try:
            state_dict = load_hub_weights(repo_id, cfg.architecture, revision, cached_only=True)
            return PretrainedWeights(state_dict, f"hf-hub:{repo_id}")
        except DownloadError:
            pass
    if hf_constants.HF_HUB_OFFLINE:
        offline = "not cached, and HF_HUB_OFFLINE=1 forbids downloads"
        raise WeightsNotFoundError(_not_found(cfg, name, repo_id, [offline]))
    if repo_id:
        try:
            state_dict = load_hub_weights(repo_id, cfg.architecture, revision)
            return PretrainedWeights(state_dict, f"hf-hub:{repo_id}")
        except DownloadError as error:
            tried.append(str(error))
    return None


def _not_found(cfg: PretrainedCfg, name: str, repo_id: str, tried: list[str]) -> str:
    authors = getattr(cfg, "authors_file", None)
    command = f"spikezoo convert FILE --model {name} --out DIR --install"
    tried_text = "; ".join(tried) or f"not cached, and {repo_id or 'no Hub repository'} not asked"
    if authors is None:
        return (
            f"no weights for {name}: the authors released none, and none are installed or "
            f"published ({tried_text}); train your own ('spikezoo train') and install the "
            f"checkpoint with '{command}'"
        )
    return (
        f"no weights for {name} ({tried_text}); the authors' file is at {authors.where()}; "
        f"convert a downloaded file with '{command}'"
    )
