"""Backend ``"inductor"``: the eager loops fused by ``torch.compile``.

Each loop compiles into one kernel (C++/OpenMP on the CPU, Triton on CUDA), once per
configuration; PyTorch caches the result on disk. T is unrolled, so each sequence length is a
graph of its own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from spikezoo.neurons import dynamics
from spikezoo.neurons.dynamics import NeuronConfig

__all__ = ["backward", "forward", "unavailable_reason"]


@functools.cache
def _compiled(loop: Callable, cfg: NeuronConfig, flag: bool) -> Callable:
    """``loop`` compiled by ``torch.compile``, one compile region per ``(loop, cfg, flag)``."""
    return torch.compile(
        loop, dynamic=True, fullgraph=True, isolate_recompiles=True, recompile_limit=64
    )


def _run(loop: Callable, cfg: NeuronConfig, flag: bool, tensors: tuple[Tensor, ...]) -> tuple:
    # Detached aliases: a view's base would put its rank into dynamo's guards.
    detached = [t.detach() for t in tensors]
    return _compiled(loop, cfg, flag)(*detached, cfg, flag)


def forward(
    x: Tensor, v_init: Tensor, k: Tensor, cfg: NeuronConfig, keep_charged: bool
) -> tuple[Tensor, Tensor | None, Tensor]:
    """:func:`spikezoo.neurons.dynamics.forward_sequence`, compiled."""
    return _run(dynamics.forward_sequence, cfg, keep_charged, (x, v_init, k))


def backward(
    grad_spikes: Tensor,
    grad_v: Tensor,
    charged: Tensor,
    v_init: Tensor,
    k: Tensor,
    cfg: NeuronConfig,
    grad_k_needed: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`spikezoo.neurons.dynamics.backward_sequence`, compiled."""
    tensors = (grad_spikes, grad_v, charged, v_init, k)
    return _run(dynamics.backward_sequence, cfg, grad_k_needed, tensors)


def unavailable_reason(x: Tensor) -> str | None:
    """``None`` where ``torch.compile`` is supported; it may still fail to compile."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile is not supported on this Python version"
    return None
