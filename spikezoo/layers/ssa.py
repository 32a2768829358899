"""Spiking self-attention (SSA), Zhou et al., "Spikformer", ICLR 2023; and its pre-activation
form from Spikingformer (Zhou et al., 2023)."""

from __future__ import annotations

from types import MappingProxyType

from einops import rearrange
from torch import Tensor

from spikezoo._checks import boolean, divides, positive_int, positive_real
from spikezoo.layers.attention import SpikingAttention
from spikezoo.layers.defaults import SPIKFORMER_NEURON
from spikezoo.layers.spike_products import SpikingMatmul
from spikezoo.layers.temporal import ConvBN, DropPath, NeuronFactory, check_tbchw

__all__ = ["SSA"]


class SSA(SpikingAttention):
    """Spiking self-attention: ``[T, B, dim, H, W]`` -> ``[T, B, dim, H, W]`` (residual).

    With ``q, k, v = LIF(BN(conv1x1(x)))``, split into heads of width ``d = dim / num_heads``
    over the ``N = H*W`` tokens (``[T, B, heads, N, d]``)::

        a   = LIF_0.5(q @ k^T @ v * scale)          # no softmax: spike products only
        out = x + LIF(BN(conv1x1(a)))               # Spikformer (post-activation)

    With ``pre_activation=True`` (Spikingformer) a neuron fires on the input first and the
    projection ends in BN, so the residual adds membrane potentials::

        s   = LIF(x);  q, k, v = LIF(BN(conv1x1(s)))
        out = x + BN(conv1x1(a))

    The products of 0/1 spikes are integers, exact in any order; ``kv_first`` chooses the
    authors' order, which decides the cost that :mod:`spikezoo.analysis` counts: ``q @ (k^T @
    v)`` (``d x d`` in between, the ImageNet files) or ``(q @ k^T) @ v`` (``N x N``, the CIFAR
    and DVS files).

    Args:
        dim: channels; a multiple of ``num_heads``.
        num_heads: attention heads.
        scale: factor of the product (0.125 in the papers; 0.25 in Spikformer's CIFAR10-DVS
            file).
        qkv_bias: biases in the q, k, v projections (Spikformer's CIFAR file has them).
        kv_first: compute ``k^T @ v`` first (see above).
        pre_activation: Spikingformer's order (see above).
        attn_threshold: firing threshold of the neuron after the product (0.5).
        neuron: factory of the spiking neurons.
        drop_path: stochastic depth of the residual branch (the authors' code applies none).
        proj_neuron_over_batch: run the projection's neuron over the flattened ``T*B`` axis,
            as QKFormer's stage-3 SSA does (its released weights were trained so): the
            membrane carries from sample to sample within a step and from step to step, so a
            sample's output depends on the others in its batch. ``False`` (the default) is the
            per-step neuron, for training new models. Post-activation only.

    Example:
        >>> import torch
        >>> attn = SSA(dim=64, num_heads=8)
        >>> attn(torch.randn(4, 2, 64, 8, 8)).shape
        torch.Size([4, 2, 64, 8, 8])
    """

    head_layout = MappingProxyType(
        {"q_lif": "channels", "k_lif": "channels", "v_lif": "channels", "attn_lif": "channels"}
    )
    #: ``q @ k^T @ v``, ``[T, B, heads, N, d]``: each token's attention output
    attention_map = ("token_product", -1)

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        scale: float = 0.125,
        qkv_bias: bool = False,
        kv_first: bool = True,
        pre_activation: bool = False,
        attn_threshold: float = 0.5,
        neuron: NeuronFactory = SPIKFORMER_NEURON,
        drop_path: float = 0.0,
        proj_neuron_over_batch: bool = False,
    ) -> None:
        super().__init__()
        self.dim = positive_int("dim", dim)
        self.num_heads = positive_int("num_heads", num_heads)
        divides("num_heads", self.num_heads, "dim", self.dim)
        self.scale = positive_real("scale", scale)
        self.kv_first = boolean("kv_first", kv_first)
        self.pre_activation = boolean("pre_activation", pre_activation)
        self.proj_neuron_over_batch = boolean("proj_neuron_over_batch", proj_neuron_over_batch)
        if pre_activation and proj_neuron_over_batch:
            raise ValueError(
                "proj_neuron_over_batch=True needs the projection's neuron, which "
                "pre_activation=True leaves out"
            )
        self.shortcut_lif = neuron() if pre_activation else None
        self.q = ConvBN(dim, dim, bias=qkv_bias)
        self.q_lif = neuron()
        self.k = ConvBN(dim, dim, bias=qkv_bias)
        self.k_lif = neuron()
        self.v = ConvBN(dim, dim, bias=qkv_bias)
        self.v_lif = neuron()
        #: ``k^T @ v`` ([T, B, heads, d, d]) or ``q @ k^T`` ([T, B, heads, N, N])
        self.pair_product = SpikingMatmul()
        #: ``q @ (k^T v)`` or ``(q k^T) @ v``: [T, B, heads, N, d]
        self.token_product = SpikingMatmul()
        self.attn_lif = neuron(v_threshold=attn_threshold)
        self.proj = ConvBN(dim, dim, bias=True)
        self.proj_lif = None if pre_activation else neuron()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """``x [T, B, dim, H, W]`` -> ``x + attention(x)``, same shape."""
        check_tbchw(x, self.dim, "SSA")
        height = x.shape[-2]
        s = self.shortcut_lif(x) if self.shortcut_lif is not None else x
        # each projection's BatchNorm feeds its neuron directly: fused
        q, k, v = (
            rearrange(
                proj.conv_bn_fire(s, lif),
                "t b (heads d) h w -> t b heads (h w) d",
                heads=self.num_heads,
            )
            for proj, lif in ((self.q, self.q_lif), (self.k, self.k_lif), (self.v, self.v_lif))
        )
        if self.kv_first:
            out = self.token_product(q, self.pair_product(k.transpose(-2, -1), v))
        else:
            out = self.token_product(self.pair_product(q, k.transpose(-2, -1)), v)
        out = rearrange(out * self.scale, "t b heads (h w) d -> t b (heads d) h w", h=height)
        out = self.attn_lif(out)
        if self.proj_neuron_over_batch:
            out = self.proj(out)
            out = self.proj_lif(out.flatten(0, 1)).unflatten(0, out.shape[:2])
        elif self.proj_lif is not None:  # the projection's BatchNorm feeds it directly: fused
            out = self.proj.conv_bn_fire(out, self.proj_lif)
        else:
            out = self.proj(out)
        return x + self.drop_path(out)
