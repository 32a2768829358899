"""Feeding one batch or a whole data loader through a model, with a progress bar."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def run_batches(
    model: nn.Module,
    data: Tensor | Iterable,
    progress: bool,
    max_batches: int | None,
    description: str,
) -> int:
    """Run ``model`` without gradients on ``data``; return the number of batches run.

    ``data`` is one input batch (a tensor) or an iterable of batches (e.g. a ``DataLoader``)
    whose items are tensors or ``(inputs, targets, ...)`` tuples; only the inputs are used, moved
    to the device of the model's first parameter.
    """
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
    batches = [data] if isinstance(data, Tensor) else data
    device = next((p.device for p in model.parameters()), None)
    total = None
    if max_batches is not None or hasattr(batches, "__len__"):
        total = min(x for x in (max_batches, _length(batches)) if x is not None)
    from tqdm.auto import tqdm

    count = 0
    with torch.no_grad():
        for batch in tqdm(batches, total=total, desc=description, disable=not progress):
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            if not isinstance(inputs, Tensor):
                raise TypeError(
                    "data must yield tensors or (inputs, targets) tuples, got "
                    f"{type(inputs).__name__}"
                )
            model(inputs if device is None else inputs.to(device))
            count += 1
            if count == max_batches:
                break
    return count


def _length(batches: Iterable) -> int | None:
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None
