"""Spike-driven self-attention (SDSA), Yao et al., NeurIPS 2023."""

from __future__ import annotations

from types import MappingProxyType

from einops import rearrange
from torch import Tensor

from spikezoo._checks import divides, positive_int
from spikezoo.layers.attention import SpikingAttention
from spikezoo.layers.defaults import SDT_NEURON
from spikezoo.layers.pooling import max_pool2d
from spikezoo.layers.spike_products import SpikingHadamard, SpikingSum
from spikezoo.layers.temporal import ConvBN, DropPath, NeuronFactory, check_tbchw

__all__ = ["SDSA", "dilate"]


def dilate(x: Tensor) -> Tensor:
    """3x3 max-pool (stride 1, pad 1) over the last two dimensions of any tensor.

    On spikes this is a morphological dilation: a neuron fires where any of its 3x3
    neighbours fired. It is what the authors' DVS code calls "erode" (``MaxPool3d((1, 3, 3))``
    on a 5-D tensor): on ``[T, B, C, H, W]`` it pools space; on ``[T, B, heads, N, d]`` it
    pools across neighbouring token indices and neighbouring channels.
    """
    return max_pool2d(x.flatten(0, -3), 3, 1, 1).view(x.shape)


class SDSA(SpikingAttention):
    """Spike-driven self-attention: ``[T, B, dim, H, W]`` -> ``[T, B, dim, H, W]`` (residual).

    With spikes ``s = LIF(x)``, ``q, k, v = LIF(BN(conv1x1(s)))``, split into heads of width
    ``d = dim / num_heads`` over the ``N = H*W`` tokens::

        kv  = LIF_0.5(sum_N(k * v))      # [T, B, heads, 1, d]: one spike vector per head
        out = x + BN(conv1x1(q * kv))

    Only Hadamard products and a column sum: time and memory are linear in N and d, and no
    ``N x N`` tensor exists. ``kv_threshold`` is the firing threshold of the key-value neuron
    (0.5 in the paper). ``dvs=True`` adds the authors' DVS max-pools (:func:`dilate`) to k, v,
    ``k * v`` and the output.

    On a token sequence ``[T, B, N, C]``, lay the tokens out as a ``N x 1`` image::

        x = rearrange(tokens, "t b n c -> t b c n 1")
        tokens = rearrange(sdsa(x), "t b c n 1 -> t b n c")

    Example:
        >>> import torch
        >>> attn = SDSA(dim=64, num_heads=8)
        >>> attn(torch.randn(4, 2, 64, 8, 8)).shape
        torch.Size([4, 2, 64, 8, 8])
    """

    head_layout = MappingProxyType(
        {"q_lif": "channels", "k_lif": "channels", "v_lif": "channels", "kv_lif": "axis"}
    )
    #: ``q * kv``, ``[T, B, heads, N, d]``: the tokens the key-value mask lets through
    attention_map = ("q_mask", -1)

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        dvs: bool = False,
        kv_threshold: float = 0.5,
        neuron: NeuronFactory = SDT_NEURON,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim = positive_int("dim", dim)
        self.num_heads = positive_int("num_heads", num_heads)
        divides("num_heads", self.num_heads, "dim", self.dim)
        self.dvs = dvs
        self.shortcut_lif = neuron()
        self.q = ConvBN(dim, dim)
        self.q_lif = neuron()
        self.k = ConvBN(dim, dim)
        self.k_lif = neuron()
        self.v = ConvBN(dim, dim)
        self.v_lif = neuron()
        self.kv_product = SpikingHadamard()
        self.kv_sum = SpikingSum(dim=-2)
        self.kv_lif = neuron(v_threshold=kv_threshold)
        self.q_mask = SpikingHadamard()
        self.proj = ConvBN(dim, dim, bias=True)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """``x [T, B, dim, H, W]`` -> ``x + attention(x)``, same shape."""
        check_tbchw(x, self.dim, "SDSA")
        height = x.shape[-2]
        s = self.shortcut_lif(x)
        q, k, v = (
            conv.conv_bn_fire(s, neuron)
            for conv, neuron in ((self.q, self.q_lif), (self.k, self.k_lif), (self.v, self.v_lif))
        )
        if self.dvs:
            k, v = dilate(k), dilate(v)
        q, k, v = (
            rearrange(t, "t b (heads d) h w -> t b heads (h w) d", heads=self.num_heads)
            for t in (q, k, v)
        )
        kv = self.kv_product(k, v)
        if self.dvs:
            kv = dilate(kv)
        kv = self.kv_lif(self.kv_sum(kv))
        out = self.q_mask(q, kv)
        if self.dvs:
            out = dilate(out)
        out = rearrange(out, "t b heads (h w) d -> t b (heads d) h w", h=height)
        return x + self.drop_path(self.proj(out))
