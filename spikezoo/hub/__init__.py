"""Weights: reading checkpoint files safely, finding the weights of ``pretrained=True``,
converting checkpoints into timm model directories and publishing them on the Hub.

See ``docs/weights.md``.
"""

from spikezoo.hub.authors import AUTHORS_FILES, AuthorsFile
from spikezoo.hub.cache import cache_root, install, installed_dir
from spikezoo.hub.checkpoint_file import CheckpointFileError, read_checkpoint
from spikezoo.hub.convert import convert_checkpoint
from spikezoo.hub.errors import DownloadError, PublishError, WeightsError, WeightsNotFoundError
from spikezoo.hub.manifest import publish, read_manifest
from spikezoo.hub.remote import push_folder
from spikezoo.hub.sources import fetch_authors_weights, pretrained_state_dict

__all__ = [
    "AUTHORS_FILES",
    "AuthorsFile",
    "CheckpointFileError",
    "DownloadError",
    "PublishError",
    "WeightsError",
    "WeightsNotFoundError",
    "cache_root",
    "convert_checkpoint",
    "fetch_authors_weights",
    "install",
    "installed_dir",
    "pretrained_state_dict",
    "publish",
    "push_folder",
    "read_checkpoint",
    "read_manifest",
]
