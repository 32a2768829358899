"""SpikingResformer's dual spike self-attention (DSSA) and stage entry (Shi et al., CVPR 2024)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from einops import rearrange
from torch import Tensor, nn

from spikezoo.layers.defaults import RESFORMER_NEURON
from spikezoo.layers.spike_products import SpikingMatmul
from spikezoo.layers.temporal import ConvBN, DropPath, NeuronFactory, check_tbchw

__all__ = ["DSSA", "Downsample", "freeze_firing_rates"]

_RATE_BUFFERS = ("firing_rate_x", "firing_rate_attn")


class DSSA(nn.Module):
    """Dual spike self-attention: ``[T, B, dim, H, W]`` -> same shape (residual).

    With spikes ``s = LIF(x)`` laid out per head as ``[T, B, heads, d, H*W]``, and
    ``y = BN(conv_pxp(s))`` (a ``p x p`` stride-``p`` patch projection to ``2*dim`` channels)
    split per head into ``y1, y2`` of ``[T, B, heads, d, M]``, ``M = (H/p)*(W/p)``::

        attn = LIF((y1^T @ s) / sqrt(r_x * d))          # [T, B, heads, M, H*W], spikes
        out  = (y2 @ attn) / sqrt(r_attn * M)           # [T, B, heads, d, H*W]
        return x + BN(conv1x1(LIF(out)))

    ``r_x`` and ``r_attn`` are the per-head firing rates of ``s`` and ``attn``, kept in the
    buffers ``firing_rate_x`` / ``firing_rate_attn`` (shape ``[1, 1, heads, 1, 1]``). In
    training mode every call measures the batch rate ``r``; the first training call of a
    module whose buffer is all zeros copies ``r`` in; then every training call applies
    ``rate = momentum * rate + (1 - momentum) * r`` before the rate is used. Eval mode only
    reads them. ``M`` comes from the input, so any resolution divisible by ``patch_size``
    works (the authors evaluate at 288x288 a model trained at 224x224).

    Set ``update_firing_rates = False`` (or use :func:`freeze_firing_rates`) to train without
    touching the buffers.

    Example:
        >>> import torch
        >>> attn = DSSA(dim=64, num_heads=2, patch_size=4)
        >>> attn(torch.randn(4, 2, 64, 16, 16)).shape
        torch.Size([4, 2, 64, 16, 16])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        patch_size: int = 1,
        momentum: float = 0.999,
        neuron: NeuronFactory = RESFORMER_NEURON,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.momentum = momentum
        self.update_firing_rates = True
        self.register_buffer("firing_rate_x", torch.zeros(1, 1, num_heads, 1, 1))
        self.register_buffer("firing_rate_attn", torch.zeros(1, 1, num_heads, 1, 1))
        self.register_buffer("_rates_initialised", torch.tensor(False), persistent=False)
        self.in_lif = neuron()
        self.patch_proj = ConvBN(dim, 2 * dim, patch_size, stride=patch_size, padding=0)
        self.attn_matmul = SpikingMatmul()
        self.attn_lif = neuron()
        self.out_matmul = SpikingMatmul()
        self.proj = ConvBN(dim, dim, neuron=neuron)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        check_tbchw(x, self.dim, "DSSA")
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"DSSA patch_size {self.patch_size} must divide H and W; got {height}x{width}"
            )
        head_dim = self.dim // self.num_heads
        num_patches = (height // self.patch_size) * (width // self.patch_size)
        update = self.training and self.update_firing_rates

        s = self.in_lif(x)
        y = rearrange(
            self.patch_proj(s), "t b (heads e) h w -> t b heads e (h w)", heads=self.num_heads
        )
        y1, y2 = y[:, :, :, :head_dim], y[:, :, :, head_dim:]
        s = rearrange(s, "t b (heads d) h w -> t b heads d (h w)", heads=self.num_heads)

        if update:
            self._track_rate(self.firing_rate_x, s)
        attn = self.attn_matmul(y1.transpose(-1, -2), s) * _scale(self.firing_rate_x, head_dim)
        attn = self.attn_lif(attn)
        if update:
            self._track_rate(self.firing_rate_attn, attn)
            self._rates_initialised.fill_(True)
        out = self.out_matmul(y2, attn) * _scale(self.firing_rate_attn, num_patches)
        out = rearrange(out, "t b heads d (h w) -> t b (heads d) h w", h=height)
        return x + self.drop_path(self.proj(out))

    def _apply(self, fn, recurse=True):
        # torch converts every 5-D tensor on ``model.to(memory_format=torch.channels_last)`` and
        # fails on the [1, 1, heads, 1, 1] rate buffers: hand them over flat.
        for name in _RATE_BUFFERS:
            self._buffers[name] = self._buffers[name].view(-1)
        try:
            return super()._apply(fn, recurse)
        finally:
            for name in _RATE_BUFFERS:
                self._buffers[name] = self._buffers[name].view(1, 1, -1, 1, 1)

    @torch.no_grad()
    def _track_rate(self, buffer: Tensor, spikes: Tensor) -> None:
        """EMA step of ``buffer`` towards the per-head rate of ``spikes [T, B, heads, *, *]``."""
        batch_rate = spikes.mean((0, 1, 3, 4), keepdim=True)
        unset = ~self._rates_initialised & (buffer == 0).all()
        buffer.copy_(torch.where(unset, batch_rate, buffer))
        buffer.mul_(self.momentum).add_(batch_rate * (1 - self.momentum))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, patch_size={self.patch_size}, "
            f"momentum={self.momentum}"
        )


def _scale(rate: Tensor, fan_in: int) -> Tensor:
    """``1 / sqrt(rate * fan_in)``, kept finite for a head that never fired (rate 0).

    Where the rate is 0 the product it scales is 0 too; the authors' code returns NaN there.
    """
    return 1.0 / torch.sqrt(rate.clamp_min(torch.finfo(rate.dtype).tiny) * fan_in)


@contextlib.contextmanager
def freeze_firing_rates(module: nn.Module) -> Iterator[None]:
    """Within the block, no :class:`DSSA` inside ``module`` writes its firing-rate buffers.

    Gradient checkpointing uses this while it recomputes a forward pass, so the buffers advance
    once per step and the recomputation sees the rates the original pass used.
    """
    layers = [m for m in module.modules() if isinstance(m, DSSA)]
    saved = [m.update_firing_rates for m in layers]
    for m in layers:
        m.update_firing_rates = False
    try:
        yield
    finally:
        for m, flag in zip(layers, saved, strict=True):
            m.update_firing_rates = flag


class Downsample(ConvBN):
    """SpikingResformer's stage entry: ``BN(conv3x3_stride2(LIF(x)))``.

    ``[T, B, in_chans, H, W]`` -> ``[T, B, out_chans, ceil(H/stride), ceil(W/stride)]``.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        stride: int = 2,
        neuron: NeuronFactory = RESFORMER_NEURON,
    ) -> None:
        super().__init__(in_chans, out_chans, 3, stride=stride, neuron=neuron)
