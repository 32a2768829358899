"""Training checkpoints: one weights-only loadable dict, written atomically.

A checkpoint holds ``state_dict`` (the model, no ``module.`` prefix), ``state_dict_ema`` when
EMA is on, the optimizer, scheduler and RNG states, the epoch, the metrics and the recipe, all
as tensors and plain Python values, so ``torch.load(path, weights_only=True)`` reads it and
timm's ``pretrained_cfg_overlay=dict(file=path)`` loads it (the EMA weights when present, as
timm's own training script does).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spikezoo.weights import (
    TRAINING_CHECKPOINT_FORMAT,
    CheckpointFileError,
    read_checkpoint_contents,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "capture_rng_state",
    "read_training_checkpoint",
    "restore_rng_state",
    "save_atomic",
]

#: ``format`` entry of a spikezoo training checkpoint.
CHECKPOINT_FORMAT = TRAINING_CHECKPOINT_FORMAT

_REQUIRED = ("state_dict", "optimizer", "scheduler", "epoch", "rng", "format")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or is not a spikezoo training checkpoint."""


def save_atomic(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``checkpoint`` to ``path`` so that ``path`` is always the old or the new file.

    Writes a temporary file in the same folder, flushes and fsyncs it, renames it over
    ``path`` (atomic on POSIX and Windows) and fsyncs the folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def read_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`~spikezoo.train.train` (weights only, on the CPU).

    Read by :func:`spikezoo.weights.read_checkpoint_contents`, the one safe reader of
    checkpoint files. Raises :class:`CheckpointError` naming the file when it is missing, a
    directory, unreadable (truncated, corrupted, not a checkpoint, holding Python objects) or
    lacks the entries a resume needs.
    """
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.pth"))
        found = f"; it holds {', '.join(inside)}" if inside else ""
        raise CheckpointError(
            f"checkpoint '{path}' is a directory; expected a checkpoint file written by "
            f"'spikezoo train', e.g. '{path / 'best.pth'}'{found}"
        )
    try:
        checkpoint = read_checkpoint_contents(path)
    except CheckpointFileError as error:
        raise CheckpointError(str(error)) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"checkpoint '{path}' holds a {type(checkpoint).__name__}, expected a dict"
        )
    missing = [key for key in _REQUIRED if key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"checkpoint '{path}' is not a spikezoo training checkpoint "
            f"(missing {', '.join(missing)}; 'spikezoo train' writes last.pth and best.pth)"
        )
    return checkpoint


def capture_rng_state() -> dict[str, Any]:
    """Python's, NumPy's (timm's Mixup draws from it), torch's and CUDA's RNG states."""
    version, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": [version, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state`."""
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    version, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((version, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
