"""E-SpikeFormer's blocks (Spike-driven Transformer V3, Yao et al., TPAMI 2025).

The base models (``Model_Base/models.py`` of BICLab/Spike-Driven-Transformer-V3) reuse
Meta-SpikeFormer's layout (:mod:`spikezoo.layers.metaformer`) with integer spikes
(:class:`~spikezoo.neurons.IntegerNeuron`) and two layers of their own: a separable convolution
that fires before each of its three convolutions (:class:`SpikingSepConv`) and a linear
attention that multiplies ``q @ k^T`` first, over a value path four times wider
(:class:`IntegerLinearAttention`). All tensors are ``[T, B, C, H, W]`` membranes.
"""

from __future__ import annotations

from types import MappingProxyType

from einops import rearrange
from torch import Tensor, nn

from spikezoo._checks import divides, positive_int, positive_real
from spikezoo.layers.attention import SpikingAttention
from spikezoo.layers.spike_products import SpikingMatmul
from spikezoo.layers.temporal import ConvBN, DropPath, NeuronFactory, check_tbchw

__all__ = ["IntegerLinearAttention", "SpikingSepConv"]


class SpikingSepConv(nn.Module):
    """Inverted separable convolution with spikes before every convolution, not residual.

    ``[T, B, dim, H, W]`` -> same shape::

        h = BN(pw1(S(x)))                   # dim -> expansion*dim
        h = BN(dw(S(h)))                    # depthwise kernel_size x kernel_size
        return BN(pw2(S(h)))                # back to dim

    It differs from Meta-SpikeFormer's :class:`~spikezoo.layers.SepConv`, which has neither
    the BN after the depthwise convolution nor the neuron before ``pw2``.

    Args:
        dim: channels.
        expansion: width of the depthwise convolution as a multiple of ``dim``.
        kernel_size: depthwise kernel size (odd; "same" padding).
        neuron: factory of the spiking neurons.
    """

    def __init__(
        self, dim: int, neuron: NeuronFactory, expansion: int = 2, kernel_size: int = 7
    ) -> None:
        super().__init__()
        self.dim = positive_int("dim", dim)
        hidden = dim * positive_int("expansion", expansion)
        self.expand = ConvBN(dim, hidden, neuron=neuron)
        self.depthwise = ConvBN(hidden, hidden, kernel_size, groups=hidden, neuron=neuron)
        self.pointwise = ConvBN(hidden, dim, neuron=neuron)

    def forward(self, x: Tensor) -> Tensor:
        """``x [T, B, dim, H, W]`` -> same shape (no residual)."""
        check_tbchw(x, self.dim, "SpikingSepConv")
        # each BatchNorm feeds the next layer's neuron directly: fused along the chain
        spikes = self.expand.conv_bn_fire(x, self.depthwise.neuron)
        spikes = self.depthwise.conv_bn_fire(spikes, self.pointwise.neuron, fired=True)
        return self.pointwise.conv_bn(spikes)


class IntegerLinearAttention(SpikingAttention):
    """E-SpikeFormer's linear spike-driven attention, residual.

    ``[T, B, dim, H, W]`` -> same shape. With spikes ``s = S(x)``, 1x1 conv + BN projections
    per step, split into heads over ``N = H*W`` tokens (``d = dim / heads``)::

        q, k = S(BN(W_q s)), S(BN(W_k s))         # [T, B, heads, N, d]
        v = S(BN(W_v s))                          # [T, B, heads, N, value_ratio * d]
        out = S((q @ k^T) @ v * scale)            # q @ k^T: [T, B, heads, N, N]
        return x + BN(W_proj out)                 # value_ratio * dim -> dim

    The products go through :class:`~spikezoo.layers.SpikingMatmul` so that the operation
    counter and the binary expansion see both operands.

    Args:
        dim: channels C.
        num_heads: attention heads; must divide ``dim``.
        neuron: factory of the spiking neurons.
        value_ratio: width of the value path as a multiple of ``dim`` (4 in the authors' code).
        scale: factor on ``(q @ k^T) @ v``; ``None`` takes the authors' ``2 / sqrt(d)``.
        drop_path: stochastic depth of the residual branch, in ``[0, 1)``.
    """

    head_layout = MappingProxyType(
        {
            "q_spike": "channels",
            "k_spike": "channels",
            "v_spike": "channels",
            "attn_spike": "channels",
        }
    )
    #: the attention output ``[T, B, heads, value_ratio * d, H, W]``: what each token passes on
    attention_map = ("attn_spike", 3)

    def __init__(
        self,
        dim: int,
        num_heads: int,
        neuron: NeuronFactory,
        value_ratio: int = 4,
        scale: float | None = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim = positive_int("dim", dim)
        self.num_heads = positive_int("num_heads", num_heads)
        divides("num_heads", self.num_heads, "dim", self.dim)
        value_dim = dim * positive_int("value_ratio", value_ratio)
        head_dim = dim // num_heads
        self.scale = 2 * head_dim**-0.5 if scale is None else positive_real("scale", scale)
        self.input_spike = neuron()
        self.q = ConvBN(dim, dim)
        self.q_spike = neuron()
        self.k = ConvBN(dim, dim)
        self.k_spike = neuron()
        self.v = ConvBN(dim, value_dim)
        self.v_spike = neuron()
        self.qk_matmul = SpikingMatmul()
        self.v_matmul = SpikingMatmul()
        self.attn_spike = neuron()
        self.proj = ConvBN(value_dim, dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """``x [T, B, dim, H, W]`` -> ``x + attention(x)``, same shape."""
        check_tbchw(x, self.dim, "IntegerLinearAttention")
        height = x.shape[-2]
        s = self.input_spike(x)
        q, k, v = (
            rearrange(
                projection.conv_bn_fire(s, spike),
                "t b (heads d) h w -> t b heads (h w) d",
                heads=self.num_heads,
            )
            for projection, spike in (
                (self.q, self.q_spike),
                (self.k, self.k_spike),
                (self.v, self.v_spike),
            )
        )
        out = self.v_matmul(self.qk_matmul(q, k.transpose(-2, -1)), v) * self.scale
        out = self.attn_spike(rearrange(out, "t b heads (h w) d -> t b (heads d) h w", h=height))
        return x + self.drop_path(self.proj(out))

    def extra_repr(self) -> str:
        """The head count and scale, for ``print(module)``."""
        return f"dim={self.dim}, num_heads={self.num_heads}, scale={self.scale:.6g}"
