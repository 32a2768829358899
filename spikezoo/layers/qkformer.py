"""QKFormer's layers (Zhou et al., NeurIPS 2024): token Q-K attention and the SEW patch
embeddings between its stages.

Unlike the layers of Spike-driven Transformer, these follow Spikformer's post-activation order:
every unit is conv, BN (, max-pool), then the neuron, and residual branches end in spikes. The
stage-3 attention is Spikformer's SSA (:mod:`spikezoo.layers.ssa`).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

from einops import rearrange
from timm.layers import register_notrace_function
from torch import Tensor, nn

from spikezoo._checks import divides, positive_int, positive_real
from spikezoo.layers.attention import SpikingAttention
from spikezoo.layers.defaults import QKFORMER_NEURON
from spikezoo.layers.pooling import MaxPool2d
from spikezoo.layers.spike_products import SpikingHadamard, SpikingSum
from spikezoo.layers.temporal import ConvBN, DropPath, NeuronFactory, PerStep, check_tbchw

__all__ = ["SEWPatchEmbedding", "TokenQKAttention"]


@register_notrace_function  # torch.fx cannot branch on the shape of its proxies
def check_embedding_input(x: Tensor, in_chans: int, reduction: int) -> None:
    """Raise ``ValueError`` unless ``x`` is ``[T, B, in_chans, H, W]`` that ``reduction``
    divides."""
    check_tbchw(x, in_chans, "SEWPatchEmbedding")
    height, width = x.shape[-2:]
    if height % reduction or width % reduction:
        raise ValueError(
            f"SEWPatchEmbedding reduces the resolution {reduction}x, so H and W must be "
            f"multiples of {reduction}; got {height}x{width}"
        )


class SEWPatchEmbedding(nn.Module):
    """A patch embedding ending in a SEW residual sum: ``[T, B, in_chans, H, W]`` ->
    ``[T, B, widths[-1], H/r, W/r]``, values in {0, 1, 2}.

    The main path is a chain of 3x3 units ``LIF(pool(BN(conv(x))))``, one per entry of
    ``widths``; ``pooling[i]`` puts a 3x3 stride-2 max-pool after unit ``i``'s BN, so
    ``r = 2 ** sum(pooling)``. The shortcut ``LIF(BN(conv1x1(s)))``, strided by the
    reduction left after it, reads ``s``: the embedding's input (``shortcut_from=0``) or the
    spikes of unit ``shortcut_from`` (counted from 1). The output is the sum of the two spike
    maps (SEW "ADD"), so the attention blocks after it see non-binary input.

    Args:
        in_chans: input channels.
        widths: output channels of each unit of the main path.
        pooling: per unit, whether a max-pool halves the resolution after its BN.
        shortcut_from: where the shortcut branches off, 0 to ``len(widths) - 1``.
        neuron: factory of the neurons.

    Example:
        >>> import torch
        >>> embed = SEWPatchEmbedding(16, widths=(32, 32), pooling=(True, False))
        >>> embed(torch.randn(2, 1, 16, 8, 8)).shape
        torch.Size([2, 1, 32, 4, 4])
    """

    def __init__(
        self,
        in_chans: int,
        widths: Sequence[int],
        pooling: Sequence[bool],
        shortcut_from: int = 0,
        neuron: NeuronFactory = QKFORMER_NEURON,
    ) -> None:
        super().__init__()
        self.in_chans = positive_int("in_chans", in_chans)
        widths = [positive_int(f"widths[{i}]", w) for i, w in enumerate(widths)]
        self.pooling = tuple(bool(p) for p in pooling)
        if not widths or len(widths) != len(self.pooling):
            raise ValueError(
                "widths and pooling need one entry per unit (at least one), got "
                f"{len(widths)} and {len(self.pooling)}"
            )
        if not 0 <= positive_int("shortcut_from", shortcut_from, 0) < len(widths):
            raise ValueError(
                f"shortcut_from must name the input (0) or one of the first {len(widths) - 1} "
                f"units, got {shortcut_from}"
            )
        self.reduction = 2 ** sum(self.pooling)
        self.shortcut_from = shortcut_from
        channels = [in_chans, *widths]
        self.convs = nn.ModuleList(
            ConvBN(channels[i], channels[i + 1], 3) for i in range(len(widths))
        )
        self.pools = nn.ModuleList(
            PerStep(MaxPool2d(3, 2, 1)) if p else nn.Identity() for p in self.pooling
        )
        self.neurons = nn.ModuleList(neuron() for _ in widths)
        stride = 2 ** sum(self.pooling[shortcut_from:])
        self.shortcut = ConvBN(channels[shortcut_from], widths[-1], 1, stride)
        self.shortcut_lif = neuron()

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, in_chans, H, W]`` -> ``[T, B, widths[-1], H/r, W/r]``, main + shortcut
        spikes."""
        check_embedding_input(x, self.in_chans, self.reduction)
        branch = x
        for i, (conv, pool, neuron) in enumerate(
            zip(self.convs, self.pools, self.neurons, strict=True), start=1
        ):
            # a BatchNorm feeding its neuron directly is fused with it
            x = (
                conv.conv_bn_fire(x, neuron)
                if isinstance(pool, nn.Identity)
                else neuron(pool(conv(x)))
            )
            if i == self.shortcut_from:
                branch = x
        return x + self.shortcut.conv_bn_fire(branch, self.shortcut_lif)


class TokenQKAttention(SpikingAttention):
    """QKFormer's token Q-K attention: ``[T, B, dim, H, W]`` -> same shape (residual).

    With ``q, k = LIF(BN(conv1x1(x)))`` split into heads of ``d = dim / num_heads`` channels
    over the ``N = H*W`` tokens::

        mask = LIF_0.5(sum_d(q))                  # [T, B, heads, 1, N]: a spike per token
        out  = x + LIF(BN(conv1x1(mask * k)))     # the tokens the mask lets through

    Linear in N and in d: no ``N x N`` tensor exists. The sum and the product are the leaf
    modules ``q_sum`` and ``token_mask`` (:mod:`spikezoo.layers.spike_products`), so the
    operation counter sees them. ``mask_threshold`` is the firing threshold of the token-mask
    neuron (0.5 in the paper). The input need not be spikes (QKFormer feeds SEW sums).

    Args:
        dim: channels; a multiple of ``num_heads``.
        num_heads: heads; each sums its ``d`` channels of q into one mask per token.
        mask_threshold: firing threshold of the token-mask neuron ``mask_lif``.
        neuron: factory of the spiking neurons.
        drop_path: stochastic depth of the residual branch (the authors' code applies none).

    Example:
        >>> import torch
        >>> attn = TokenQKAttention(dim=32, num_heads=4)
        >>> attn(torch.randn(2, 1, 32, 4, 4)).shape
        torch.Size([2, 1, 32, 4, 4])
    """

    head_layout = MappingProxyType({"q_lif": "channels", "k_lif": "channels", "mask_lif": "axis"})
    #: the token mask, ``[T, B, heads, 1, N]``
    attention_map = ("mask_lif", 3)

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        mask_threshold: float = 0.5,
        neuron: NeuronFactory = QKFORMER_NEURON,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim = positive_int("dim", dim)
        self.num_heads = positive_int("num_heads", num_heads)
        divides("num_heads", self.num_heads, "dim", self.dim)
        self.q = ConvBN(dim, dim)
        self.q_lif = neuron()
        self.k = ConvBN(dim, dim)
        self.k_lif = neuron()
        self.q_sum = SpikingSum(dim=3)
        self.mask_lif = neuron(v_threshold=positive_real("mask_threshold", mask_threshold))
        self.token_mask = SpikingHadamard()
        self.proj = ConvBN(dim, dim, bias=True)
        self.proj_lif = neuron()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """``x [T, B, dim, H, W]`` -> ``x + attention(x)``, same shape."""
        check_tbchw(x, self.dim, "TokenQKAttention")
        height = x.shape[-2]
        q, k = (
            rearrange(t, "t b (heads d) h w -> t b heads d (h w)", heads=self.num_heads)
            # each projection's BatchNorm feeds its neuron directly: fused
            for t in (self.q.conv_bn_fire(x, self.q_lif), self.k.conv_bn_fire(x, self.k_lif))
        )
        mask = self.mask_lif(self.q_sum(q))
        out = rearrange(
            self.token_mask(mask, k), "t b heads d (h w) -> t b (heads d) h w", h=height
        )
        return x + self.drop_path(self.proj.conv_bn_fire(out, self.proj_lif))
