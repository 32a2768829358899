"""Weights at the ground of the package: reading checkpoint files safely, spikezoo's cache,
downloads, the Hugging Face Hub and the authors' files, and where ``pretrained=True`` finds a
tag's weights.

Nothing here imports a model, layer or neuron: this package hands state dicts to the models,
whose ``checkpoint_filter_fn`` maps them. Converting checkpoints into timm model directories,
model cards and publishing sit above the models, in :mod:`spikezoo.hub`. See
``docs/weights.md``.
"""

from spikezoo.weights.authors import AuthorsFile, authors_weights, drive_file_url
from spikezoo.weights.cache import authors_dir, cache_root, install, installed_dir
from spikezoo.weights.checkpoint_file import (
    TRAINING_CHECKPOINT_FORMAT,
    CheckpointFileError,
    file_sha256,
    read_checkpoint,
    read_checkpoint_contents,
    save_state_dict,
    state_dict_in,
    unwrap_state_dict,
)
from spikezoo.weights.download import download, drive_download_url
from spikezoo.weights.errors import DownloadError, WeightsError, WeightsNotFoundError
from spikezoo.weights.hf_hub import HUB_FILES, load_hub_weights
from spikezoo.weights.pretrained_cfg import SpikingPretrainedCfg
from spikezoo.weights.sources import PretrainedWeights, pretrained_weights, weight_sources

__all__ = [
    "HUB_FILES",
    "TRAINING_CHECKPOINT_FORMAT",
    "AuthorsFile",
    "CheckpointFileError",
    "DownloadError",
    "PretrainedWeights",
    "SpikingPretrainedCfg",
    "WeightsError",
    "WeightsNotFoundError",
    "authors_dir",
    "authors_weights",
    "cache_root",
    "download",
    "drive_download_url",
    "drive_file_url",
    "file_sha256",
    "install",
    "installed_dir",
    "load_hub_weights",
    "pretrained_weights",
    "read_checkpoint",
    "read_checkpoint_contents",
    "save_state_dict",
    "state_dict_in",
    "unwrap_state_dict",
    "weight_sources",
]
