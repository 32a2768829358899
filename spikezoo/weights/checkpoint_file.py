"""Reading a checkpoint file safely: tensors only, and one clear error for every bad file.

A file is read as safetensors or through ``torch.load(weights_only=True)``. The only Python
object allowed besides tensors and containers is ``argparse.Namespace``, which the authors'
training scripts store under ``"args"`` (its fields are data; nothing is called). Anything else
is refused with :class:`CheckpointFileError`; no message ever suggests unpickling the file.
Training checkpoints are unwrapped to the state dict they hold (:func:`unwrap_state_dict`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

__all__ = [
    "TRAINING_CHECKPOINT_FORMAT",
    "CheckpointFileError",
    "file_sha256",
    "read_checkpoint",
    "read_checkpoint_contents",
    "save_state_dict",
    "sniff_format",
    "state_dict_in",
    "unwrap_state_dict",
]

#: ``format`` entry of a checkpoint written by ``spikezoo train`` (:mod:`spikezoo.train`): a
#: dict holding, besides the state dicts, ``model_name``, ``num_classes`` and ``config`` (the
#: recipe as nested dicts, its ``model.kwargs`` and ``data`` section included).
TRAINING_CHECKPOINT_FORMAT = "spikezoo.train/1"

#: The formats :func:`sniff_format` recognises.
FORMATS = ("safetensors", "torch-zip", "torch-legacy", "html", "text", "unknown")


class CheckpointFileError(ValueError):
    """A checkpoint file that cannot be read as tensors: missing, empty, truncated, not a
    checkpoint, or holding Python objects that would have to be unpickled.

    ``path`` is the file and ``reason`` says what is wrong with it; ``str(error)`` is one line
    naming both.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"checkpoint file {str(path)!r} {reason}")
        self.path = Path(path)
        self.reason = reason


def sniff_format(head: bytes) -> str:
    """The format of a file from its first bytes (at least 16): one of :data:`FORMATS`."""
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head.startswith(b"\x80") and len(head) > 1 and head[1] <= 5:
        return "torch-legacy"
    if len(head) >= 9 and head[8:9] == b"{":
        header_length = int.from_bytes(head[:8], "little")
        if 1 < header_length < 100_000_000:
            return "safetensors"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown"
    if not all(c.isprintable() or c.isspace() for c in text):
        return "unknown"
    return "html" if re.match(r"\s*<(!doctype html|html)", text, re.IGNORECASE) else "text"


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def unwrap_state_dict(checkpoint: Mapping) -> dict[str, Tensor]:
    """The state dict inside a training checkpoint.

    Accepts a bare state dict or the authors' layouts (``{"state_dict": ...}`` from the SDT
    timm script, ``{"model": ...}`` from SpikingResformer and Meta-SpikeFormer) and strips the
    ``module.`` (DDP) and ``_orig_mod.`` (``torch.compile``) prefixes.
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError(
            "expected a state dict (a mapping of names to tensors), "
            f"got {type(checkpoint).__name__}"
        )
    for key in ("state_dict", "model"):
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    return {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in checkpoint.items()}


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The state dict in a checkpoint file, read without running any code from it.

    Accepts safetensors files, ``torch.save`` files of a state dict, and training checkpoints
    holding one (``{"state_dict": ...}``, ``{"model": ...}``, the EMA weights
    ``state_dict_ema`` / ``model_ema`` first when present, as timm's loader does; ``module.`` /
    ``_orig_mod.`` prefixes are stripped). Raises :class:`CheckpointFileError` naming the file
    and what is wrong with it.
    """
    return state_dict_in(read_checkpoint_contents(path), path)


def read_checkpoint_contents(path: str | Path) -> object:
    """Everything a checkpoint file holds (a state dict, or a training checkpoint's dict of
    state dicts, optimizer state and plain values), read without running any code from it.

    The one reader of checkpoint files: :func:`read_checkpoint` and the training commands use
    it. Raises :class:`CheckpointFileError` naming the file and what is wrong with it.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointFileError(path, "does not exist")
    if path.is_dir():
        raise CheckpointFileError(
            path,
            "is a directory, not a file (a converted model directory loads with "
            f"timm.create_model('local-dir:{path}', pretrained=True))",
        )
    size = path.stat().st_size
    if size == 0:
        raise CheckpointFileError(path, "is empty (0 bytes): the download or copy did not finish")
    with path.open("rb") as file:
        head = file.read(64)
    kind = sniff_format(head)
    if kind == "safetensors":
        return _read_safetensors(path)
    if kind.startswith("torch"):
        return _read_torch(path)
    if kind == "html":
        raise CheckpointFileError(
            path, "is an HTML page, not a checkpoint (a web page was saved instead of the file)"
        )
    if kind == "text":
        start = head[:24].decode("utf-8", "replace").split("\n")[0]
        raise CheckpointFileError(
            path, f"is a text file (it starts with {start!r}), not a checkpoint"
        )
    raise CheckpointFileError(
        path, f"is not a PyTorch or safetensors checkpoint (unrecognised content, {size} bytes)"
    )


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, json.JSONDecodeError) as error:
        raise CheckpointFileError(
            path, f"is a truncated or corrupted safetensors file ({error})"
        ) from None


def _read_torch(path: Path) -> object:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message advises weights_only=False: never pass that on.
        refused = re.search(r"GLOBAL ([\w.]+)", str(error))
        if refused:
            raise CheckpointFileError(
                path,
                f"holds a Python object ({refused[1]}) besides tensors; spikezoo reads "
                "tensors only and does not run code from checkpoint files",
            ) from None
        raise CheckpointFileError(path, "is corrupted (its pickled data cannot be read)") from None
    except Exception:  # a damaged pickle stream fails in many ways (EOFError, IndexError, ...)
        raise CheckpointFileError(
            path, "is truncated or corrupted (not a complete PyTorch checkpoint)"
        ) from None


def state_dict_in(content: object, path: str | Path) -> dict[str, Tensor]:
    """The state dict in what :func:`read_checkpoint_contents` read from ``path`` (see
    :func:`read_checkpoint`); :class:`CheckpointFileError` when it holds none."""
    if isinstance(content, Tensor):
        raise CheckpointFileError(
            path,
            "holds a single tensor, not a state dict (save model.state_dict(), a mapping of "
            "parameter names to tensors)",
        )
    if not isinstance(content, Mapping):
        raise CheckpointFileError(
            path,
            f"holds a {type(content).__name__}, not a state dict (save model.state_dict(), "
            "a mapping of parameter names to tensors)",
        )
    for ema in ("state_dict_ema", "model_ema"):  # timm's scripts: EMA weights first, as timm
        if isinstance(content.get(ema), Mapping):
            content = content[ema]
            break
    state_dict = unwrap_state_dict(content)
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, Tensor)]
    if not state_dict or not_tensors:
        keys = ", ".join(map(repr, list(state_dict)[:5])) or "none"
        raise CheckpointFileError(
            path,
            "holds a dict that is not a state dict of tensors "
            f"({len(not_tensors)} of its {len(state_dict)} entries are not tensors; keys: {keys})",
        )
    return state_dict


def save_state_dict(state_dict: Mapping[str, Tensor], path: str | Path) -> None:
    """Write a state dict as a safetensors file.

    safetensors stores each tensor's own data: tensors that share memory in ``state_dict``
    (tied weights, views of one buffer) are written as separate copies.
    """
    seen_storages = set()
    tensors = {}
    for key, tensor in state_dict.items():
        storage = tensor.untyped_storage().data_ptr()
        tensors[key] = tensor.clone() if storage in seen_storages else tensor.contiguous()
        seen_storages.add(storage)
    save_file(tensors, Path(path), metadata={"format": "pt"})
