"""The measured calls: one inference batch or one training step, in float32 or bf16 autocast."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``"bf16"``, nothing for ``"fp32"``."""
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_call(
    model: nn.Module, task: str, x: Tensor, y: Tensor, dtype: str, device: torch.device
) -> Callable[[], None]:
    """A zero-argument function running one inference batch or one training step.

    Args:
        model: takes ``x [B, C, H, W]`` to logits ``[B, K]``.
        task: ``"infer"`` (eval, ``torch.no_grad``) or ``"train"`` (forward, cross-entropy
            against ``y [B]``, backward, SGD step with momentum, gradients set to ``None``).
    """
    if task == "infer":
        model.eval()

        def infer() -> None:
            with torch.no_grad(), autocast(device, dtype):
                model(x)

        return infer
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)

    def train() -> None:
        with autocast(device, dtype):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train
