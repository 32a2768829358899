"""SpikingResformer's dual spike self-attention (DSSA) and stage entry (Shi et al., CVPR 2024)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import MappingProxyType

import torch
from einops import rearrange
from timm.layers import register_notrace_function
from torch import Tensor, nn

from spikezoo._checks import divides, fraction, positive_int
from spikezoo.layers.attention import SpikingAttention
from spikezoo.layers.defaults import RESFORMER_NEURON
from spikezoo.layers.spike_products import SpikingMatmul
from spikezoo.layers.temporal import ConvBN, DropPath, NeuronFactory, check_tbchw

__all__ = ["DSSA", "Downsample", "freeze_firing_rates"]

_RATE_BUFFERS = ("firing_rate_x", "firing_rate_attn")


class DSSA(SpikingAttention):
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

    Two cases where the authors' code returns NaN have a defined value here:

    * A head whose rate is 0 never fired: the product it scales is 0, so it contributes 0
      and passes no gradient back (the authors' scale ``1/sqrt(0)`` is infinite).
    * Buffers that were never estimated (all zeros, no training call since the module was
      built): a call that does not write them (eval mode, or frozen rates) uses the batch's
      own rate, the value its first training call would write (``r``).

    Everywhere else the result is the authors' to the last bit.

    Args:
        dim: channels C of the input.
        num_heads: attention heads h; must divide ``dim``.
        patch_size: ``p``, the patch size of the ``y`` projection; must divide H and W.
        momentum: EMA momentum of the rate buffers, in ``[0, 1]``.
        neuron: factory for the spiking neurons.
        drop_path: stochastic depth of the residual branch, in ``[0, 1)``.

    Example:
        >>> import torch
        >>> attn = DSSA(dim=64, num_heads=2, patch_size=4)
        >>> attn(torch.randn(4, 2, 64, 16, 16)).shape
        torch.Size([4, 2, 64, 16, 16])
    """

    head_layout = MappingProxyType(
        {"in_lif": "channels", "attn_lif": "axis", "proj.neuron": "channels"}
    )
    #: the attention spikes ``[T, B, heads, M, N]``: how strongly the M patches attend to a token
    attention_map = ("attn_lif", -2)

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
        self.dim = positive_int("dim", dim)
        self.num_heads = positive_int("num_heads", num_heads)
        divides("num_heads", self.num_heads, "dim", self.dim)
        self.patch_size = positive_int("patch_size", patch_size)
        self.momentum = fraction("momentum", momentum)
        self.update_firing_rates = True
        self.register_buffer("firing_rate_x", torch.zeros(1, 1, num_heads, 1, 1))
        self.register_buffer("firing_rate_attn", torch.zeros(1, 1, num_heads, 1, 1))
        # whether a training call has written each rate buffer since the module was built
        self.register_buffer("_initialised_x", torch.tensor(False), persistent=False)
        self.register_buffer("_initialised_attn", torch.tensor(False), persistent=False)
        self.in_lif = neuron()
        self.patch_proj = ConvBN(dim, 2 * dim, patch_size, stride=patch_size, padding=0)
        self.attn_matmul = SpikingMatmul()
        self.attn_lif = neuron()
        self.out_matmul = SpikingMatmul()
        self.proj = ConvBN(dim, dim, neuron=neuron)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """``x [T, B, dim, H, W]`` -> ``x + attention(x)``, same shape."""
        check_dssa_input(x, self.dim, self.patch_size)
        height, width = x.shape[-2:]
        head_dim = self.dim // self.num_heads
        num_patches = (height // self.patch_size) * (width // self.patch_size)
        update = self.training and self.update_firing_rates

        s = self.in_lif(x)
        y = rearrange(
            self.patch_proj(s), "t b (heads e) h w -> t b heads e (h w)", heads=self.num_heads
        )
        y1, y2 = y[:, :, :, :head_dim], y[:, :, :, head_dim:]
        s = rearrange(s, "t b (heads d) h w -> t b heads d (h w)", heads=self.num_heads)

        rate_x = firing_rate(self.firing_rate_x, self._initialised_x, s, self.momentum, update)
        attn = self.attn_lif(self.attn_matmul(y1.transpose(-1, -2), s) * _scale(rate_x, head_dim))
        rate_attn = firing_rate(
            self.firing_rate_attn, self._initialised_attn, attn, self.momentum, update
        )
        out = self.out_matmul(y2, attn) * _scale(rate_attn, num_patches)
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

    def extra_repr(self) -> str:
        """The constructor arguments, for ``print(module)``."""
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, patch_size={self.patch_size}, "
            f"momentum={self.momentum}"
        )


# torch.fx would drop the in-place buffer writes as dead code: the call stays whole
@register_notrace_function
def firing_rate(
    buffer: Tensor, initialised: Tensor, spikes: Tensor, momentum: float, update: bool
) -> Tensor:
    """The per-head rate ``[1, 1, heads, 1, 1]`` that scales ``spikes [T, B, heads, *, *]``.

    ``estimate`` is what a training call writes: one EMA step from ``buffer``, or from the batch
    rate itself when the buffer was never estimated (all zeros and ``initialised`` unset). With
    ``update`` it is written to ``buffer`` (and ``initialised`` set) and returned; otherwise the
    buffer is returned, or ``estimate`` where the buffer was never estimated.
    """
    batch_rate = spikes.detach().mean((0, 1, 3, 4), keepdim=True)
    unset = ~initialised & (buffer == 0).all()
    estimate = torch.where(unset, batch_rate, buffer) * momentum + batch_rate * (1 - momentum)
    if not update:
        return torch.where(unset, estimate, buffer)
    buffer.copy_(estimate)
    initialised.fill_(True)
    return estimate


@register_notrace_function  # torch.fx cannot branch on the shape of its proxies
def check_dssa_input(x: Tensor, dim: int, patch_size: int) -> None:
    """Raise ``ValueError`` unless ``x`` is ``[T, B, dim, H, W]`` with ``patch_size | H, W``."""
    check_tbchw(x, dim, "DSSA")
    height, width = x.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(f"DSSA patch_size {patch_size} must divide H and W; got {height}x{width}")


def _scale(rate: Tensor, fan_in: int) -> Tensor:
    """``1 / sqrt(rate * fan_in)``, and 0 for a head whose rate is 0.

    A head with rate 0 is silent, so the product it scales is 0: it contributes 0 and passes
    no gradient back. (The authors' scale is infinite there, and their output NaN.)
    """
    return torch.where(rate > 0, 1.0 / torch.sqrt(rate * fan_in), 0.0)


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
