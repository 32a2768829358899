"""Weights: reading checkpoint files safely and finding the weights of ``pretrained=True``."""

from spikezoo.hub.checkpoint_file import CheckpointFileError, read_checkpoint
from spikezoo.hub.sources import pretrained_state_dict

__all__ = ["CheckpointFileError", "pretrained_state_dict", "read_checkpoint"]
