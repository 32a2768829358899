"""Where ``pretrained=True`` finds a model's weights."""

from __future__ import annotations

from pathlib import Path

from timm.models import PretrainedCfg
from torch import Tensor

from spikezoo.hub.checkpoint_file import CheckpointFileError, read_checkpoint

__all__ = ["WEIGHT_FILES", "pretrained_state_dict", "weights_in_directory"]

#: The weight files of a model directory, in the order timm's ``local-dir:`` prefers them.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")


def pretrained_state_dict(cfg: PretrainedCfg) -> dict[str, Tensor] | None:
    """The state dict ``cfg`` points at, read safely; ``None`` where timm's loader applies.

    An explicit ``file`` (a checkpoint) or a ``local-dir:`` directory is read with
    :func:`~spikezoo.hub.read_checkpoint`.
    """
    if cfg.state_dict is not None:
        return None
    if cfg.source == "local-dir":
        return read_checkpoint(weights_in_directory(Path(cfg.file)))
    if cfg.file:
        return read_checkpoint(cfg.file)
    return None


def weights_in_directory(directory: Path) -> Path:
    """The weight file of a converted model directory (``model.safetensors`` first)."""
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointFileError(directory, f"holds none of the weight files {list(WEIGHT_FILES)}")
