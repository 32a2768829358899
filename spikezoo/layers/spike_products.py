"""Parameter-free leaf modules for the products inside spiking attention.

SDSA and DSSA compute their attention with these modules instead of inline operators, so that
forward hooks (the operation counter of :mod:`spikezoo.analysis`, or a user's own) see every
operand, as the authors' ``SpikingMatmul`` allows. They hold no parameters or buffers: no
state-dict key depends on them, and each computes exactly the operator it names.
"""

from __future__ import annotations

from torch import Tensor, nn

from spikezoo.neurons.saved_spikes import mark_spikes, marked_as_spikes

__all__ = ["SpikingHadamard", "SpikingMatmul", "SpikingSum"]


class SpikingMatmul(nn.Module):
    """``left @ right`` for ``[..., M, K]`` and ``[..., K, N]`` -> ``[..., M, N]``."""

    def forward(self, left: Tensor, right: Tensor) -> Tensor:
        return left @ right


class SpikingHadamard(nn.Module):
    """Element-wise ``a * b`` (broadcasting), e.g. SDSA's ``k * v`` and ``q * kv``."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        product = a * b
        if marked_as_spikes(a) and marked_as_spikes(b):  # a product of spikes is spikes
            mark_spikes(product)
        return product


class SpikingSum(nn.Module):
    """Sum over ``dim``, keeping it (SDSA's column sum over the N tokens).

    ``[T, B, heads, N, d]`` -> ``[T, B, heads, 1, d]`` for ``dim=-2``.

    Example:
        >>> import torch
        >>> SpikingSum(dim=-2)(torch.ones(4, 2, 8, 16, 8)).shape
        torch.Size([4, 2, 8, 1, 8])
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return x.sum(dim=self.dim, keepdim=True)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
