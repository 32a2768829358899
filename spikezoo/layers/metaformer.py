"""Meta-SpikeFormer's blocks (Spike-driven Transformer V2, Yao et al., ICLR 2024).

Convolutional blocks (:class:`SepConv`, :class:`SpikingConvBlock`) for the early stages, and a
transformer block made of :class:`LinearSpikingAttention` (projections by :class:`RepConv`)
and :class:`SpikingTokenMLP` for the late ones. Every block is residual on membrane potentials
``[T, B, C, H, W]``, as in the authors' ``classification/models.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import register_notrace_function
from torch import Tensor, nn

from spikezoo._checks import divides, positive_int
from spikezoo.layers.attention import SpikingAttention
from spikezoo.layers.batch_norms import LayerThenBatchNorm, batch_norm
from spikezoo.layers.bn_neuron import batch_norm_fire
from spikezoo.layers.conv_layout import convolve
from spikezoo.layers.defaults import SDT_NEURON
from spikezoo.layers.renamed_children import LoadsRenamedChildren
from spikezoo.layers.spike_products import SpikingMatmul
from spikezoo.layers.temporal import ConvBN, DropPath, NeuronFactory, check_tbchw, per_step
from spikezoo.neurons.saved_spikes import mark_spikes, marked_as_spikes

__all__ = [
    "BNAndPad",
    "LinearSpikingAttention",
    "RepConv",
    "SepConv",
    "SpikingConvBlock",
    "SpikingTokenMLP",
]


# torch.fx: the padding value must be computed at run time from the running statistics (a
# traced expression of buffers alone would be frozen into the graph), and slicing by a size
# needs a real tensor
@register_notrace_function
def pad_with_bn_of_zero(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    width: int,
) -> Tensor:
    """Pad a BatchNorm's output ``x [N, C, H, W]`` by ``width`` pixels on every side with what
    that BN gives for a zero input: ``bias - running_mean * weight / sqrt(running_var + eps)``
    per channel, passing no gradient to ``weight`` and ``bias``."""
    value = bias.detach() - running_mean * weight.detach() / torch.sqrt(running_var + eps)
    out = F.pad(x, [width] * 4)
    fill = value.view(1, -1, 1, 1)
    out[:, :, :width, :] = fill
    out[:, :, -width:, :] = fill
    out[:, :, :, :width] = fill
    out[:, :, :, -width:] = fill
    return out


class BNAndPad(nn.Module):
    """``BatchNorm2d``, then a border of ``pad_pixels`` filled with what the BN gives for 0.

    ``[N, C, H, W]`` -> ``[N, C, H + 2p, W + 2p]``. The border value per channel is
    ``bias - running_mean * weight / sqrt(running_var + eps)``, taken from the running
    statistics in training mode too (after this call's update) and passing no gradient, as
    in the authors' code. In eval mode the result is ``BN(zero_pad(x))``: a following
    unpadded 3x3 convolution can be merged with the preceding 1x1 convolution and the BN.

    Args:
        num_features: channels C.
        pad_pixels: border width p (0: a plain BatchNorm).
    """

    def __init__(self, num_features: int, pad_pixels: int = 1) -> None:
        super().__init__()
        self.pad_pixels = positive_int("pad_pixels", pad_pixels, 0)
        self.bn = nn.BatchNorm2d(positive_int("num_features", num_features))

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, C, H, W]`` -> ``[N, C, H + 2p, W + 2p]``."""
        out = batch_norm(self.bn, x)
        if self.pad_pixels == 0:
            return out
        bn = self.bn
        return pad_with_bn_of_zero(
            out, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps, self.pad_pixels
        )


def _heads(spikes: Tensor, num_heads: int) -> Tensor:
    """``[T, B, heads * d, H, W]`` -> ``[T, B, heads, H * W, d]``, contiguous, as the authors lay
    the heads out (the matmuls then sum in their order). The copy of marked spikes is marked:
    the matmuls save views of it, which spike compaction then keeps as bits on CUDA too."""
    heads = rearrange(spikes, "t b (heads d) h w -> t b heads (h w) d", heads=num_heads)
    heads = heads.contiguous()
    if marked_as_spikes(spikes):
        mark_spikes(heads)
    return heads


class RepConv(nn.Module):
    """The authors' re-parameterisable convolution: ``[N, C_in, H, W]`` -> ``[N, C_out, H, W]``.

    ``BN(pointwise(depthwise3x3(BNAndPad(conv1x1(x)))))``: the depthwise 3x3 runs without
    padding on the border that :class:`BNAndPad` adds. A per-frame module like ``nn.Conv2d``:
    fold time into the batch (:class:`~spikezoo.layers.PerStep`) for ``[T, B, C, H, W]``.

    Args:
        in_chans: input channels C_in (the width of every inner layer).
        out_chans: output channels C_out.
    """

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        positive_int("in_chans", in_chans)
        positive_int("out_chans", out_chans)
        self.conv1x1 = nn.Conv2d(in_chans, in_chans, 1, bias=False)
        self.bn_pad = BNAndPad(in_chans, pad_pixels=1)
        self.depthwise = nn.Conv2d(in_chans, in_chans, 3, groups=in_chans, bias=False)
        self.pointwise = nn.Conv2d(in_chans, out_chans, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, C_in, H, W]`` -> ``[N, C_out, H, W]``."""
        x = self.bn_pad(self.conv1x1(x))
        return batch_norm(self.bn, self.pointwise(self.depthwise(x)))


class SepConv(LoadsRenamedChildren):
    """Spiking inverted separable convolution (MobileNetV2-style), not residual.

    ``[T, B, dim, H, W]`` -> same shape::

        h = BN(pw1(LIF(x)))                     # dim -> expansion*dim
        out = BN(pw2(dw7x7(LIF(h))))            # back to dim

    Args:
        dim: channels.
        expansion: width of the depthwise convolution as a multiple of ``dim``.
        kernel_size: depthwise kernel size (odd; "same" padding).
        neuron: factory of the spiking neurons.
    """

    renamed_children: ClassVar[dict[str, str]] = {"lif": "neuron"}

    def __init__(
        self,
        dim: int,
        expansion: int = 2,
        kernel_size: int = 7,
        neuron: NeuronFactory = SDT_NEURON,
    ) -> None:
        super().__init__()
        self.dim = positive_int("dim", dim)
        hidden = dim * positive_int("expansion", expansion)
        positive_int("kernel_size", kernel_size)
        self.expand = ConvBN(dim, hidden, neuron=neuron)
        self.neuron = neuron()
        self.depthwise = nn.Conv2d(
            hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden, bias=False
        )
        self.pointwise = nn.Conv2d(hidden, dim, 1, bias=False)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: Tensor) -> Tensor:
        """``x [T, B, dim, H, W]`` -> same shape (no residual)."""
        check_tbchw(x, self.dim, "SepConv")
        # expand's BatchNorm feeds the neuron directly: fused
        return per_step(self._separable, self.expand.conv_bn_fire(x, self.neuron))

    def _separable(self, x: Tensor) -> Tensor:
        return batch_norm(self.bn, self.pointwise(convolve(self.depthwise, x)))


class SpikingConvBlock(nn.Module):
    """Meta-SpikeFormer's convolutional block: ``[T, B, dim, H, W]`` -> same shape, residual.

    ::

        x = x + separable(x)                                # unless separable is None
        x = x + BN(conv3x3(LIF(BN(conv3x3(LIF(x))))))      # dim -> mlp_ratio*dim -> dim

    Args:
        dim: channels.
        mlp_ratio: hidden width of the 3x3 pair as a multiple of ``dim`` (4 in every model).
        neuron: factory of the spiking neurons.
        separable: the separable convolution's class, called ``separable(dim, neuron=neuron)``
            (E-SpikeFormer: :class:`~spikezoo.layers.SpikingSepConv`); ``None``: no separable
            branch (E-SpikeFormer's large models).
        bias: give the 3x3 convolutions a bias (E-SpikeFormer's large models do).
    """

    def __init__(
        self,
        dim: int,
        mlp_ratio: int = 4,
        neuron: NeuronFactory = SDT_NEURON,
        separable: Callable[..., nn.Module] | None = SepConv,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.dim = positive_int("dim", dim)
        hidden = dim * positive_int("mlp_ratio", mlp_ratio)
        self.sep_conv = separable(dim, neuron=neuron) if separable is not None else None
        self.conv1 = ConvBN(dim, hidden, 3, bias=bias, neuron=neuron)
        self.conv2 = ConvBN(hidden, dim, 3, bias=bias, neuron=neuron)

    def forward(self, x: Tensor) -> Tensor:
        """``x [T, B, dim, H, W]`` -> same shape."""
        if self.sep_conv is not None:
            x = x + self.sep_conv(x)
        # conv1's BatchNorm feeds conv2's neuron directly: fused, then conv2 without its neuron
        return x + self.conv2.conv_bn(self.conv1.conv_bn_fire(x, self.conv2.neuron))


class LinearSpikingAttention(SpikingAttention):
    """Meta-SpikeFormer's spike-driven linear attention, residual.

    ``[T, B, dim, H, W]`` -> same shape. With spikes ``s = LIF(x)`` and the projections
    ``P(s) = BN(RepConv(s))`` per step, split into heads of width ``d`` over ``N = H*W``::

        q, k, v = LIF(P_q(s)), LIF(P_k(s)), LIF(P_v(s))     # [T, B, heads, N, d] spikes
        out = LIF_0.5((q @ (k^T @ v)) * scale)              # k^T @ v: [T, B, heads, d, d]
        return x + gamma * P_proj(out)                      # gamma: layer scale (or 1)

    ``k^T @ v`` first keeps the cost linear in N (no ``N x N`` tensor). The two products go
    through :class:`~spikezoo.layers.SpikingMatmul`, so the operation counter sees them.

    Args:
        dim: channels C.
        num_heads: attention heads; must divide ``dim``.
        scale: factor on ``q @ (k^T @ v)`` (the authors' 0.125 for every width).
        attn_threshold: firing threshold of the attention neuron (0.5); ``None``: the
            neuron's own.
        neuron: factory of the spiking neurons.
        drop_path: stochastic depth of the residual branch, in ``[0, 1)``.
        projection: builds ``P`` for a width: a per-frame module ``[N, dim, H, W]`` -> same
            shape (default ``BN(RepConv(x))``, Meta-SpikeFormer's).
        layer_scale: initial value of the learnable per-channel scale ``gamma`` on the
            branch (E-SpikeFormer's large models: 1e-6); ``None``: no scale.
    """

    head_layout = MappingProxyType(
        {
            "q_lif": "channels",
            "k_lif": "channels",
            "v_lif": "channels",
            "attn_lif": "channels",
        }
    )
    #: the attention spikes ``[T, B, heads, d, H, W]``: what each token passes on
    attention_map = ("attn_lif", 3)

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        scale: float = 0.125,
        attn_threshold: float | None = 0.5,
        neuron: NeuronFactory = SDT_NEURON,
        drop_path: float = 0.0,
        projection: Callable[[int], nn.Module] | None = None,
        layer_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.dim = positive_int("dim", dim)
        self.num_heads = positive_int("num_heads", num_heads)
        divides("num_heads", self.num_heads, "dim", self.dim)
        self.scale = scale
        projection = projection or _projection
        self.shortcut_lif = neuron()
        self.q = projection(dim)
        self.q_lif = neuron()
        self.k = projection(dim)
        self.k_lif = neuron()
        self.v = projection(dim)
        self.v_lif = neuron()
        self.kv_matmul = SpikingMatmul()
        self.q_matmul = SpikingMatmul()
        self.attn_lif = neuron() if attn_threshold is None else neuron(v_threshold=attn_threshold)
        self.proj = projection(dim)
        self.layer_scale = _layer_scale(dim, layer_scale)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """``x [T, B, dim, H, W]`` -> ``x + attention(x)``, same shape."""
        check_tbchw(x, self.dim, "LinearSpikingAttention")
        height = x.shape[-2]
        s = self.shortcut_lif(x)
        q, k, v = (
            _heads(lif(per_step(projection, s)), self.num_heads)
            for projection, lif in (
                (self.q, self.q_lif),
                (self.k, self.k_lif),
                (self.v, self.v_lif),
            )
        )
        out = self.q_matmul(q, self.kv_matmul(k.transpose(-2, -1), v)) * self.scale
        out = self.attn_lif(rearrange(out, "t b heads (h w) d -> t b (heads d) h w", h=height))
        return x + self.drop_path(_scaled(per_step(self.proj, out), self.layer_scale))

    def extra_repr(self) -> str:
        """The head count and scale, for ``print(module)``."""
        return f"dim={self.dim}, num_heads={self.num_heads}, scale={self.scale}"


def _projection(dim: int) -> nn.Sequential:
    """``BN(RepConv(x))``, per frame: the authors' ``nn.Sequential(RepConv, BatchNorm2d)``."""
    return LayerThenBatchNorm(RepConv(dim, dim), nn.BatchNorm2d(dim))


def _layer_scale(dim: int, init: float | None) -> nn.Parameter | None:
    """A learnable per-channel scale ``[dim]`` starting at ``init``; ``None`` without one."""
    return None if init is None else nn.Parameter(torch.full((dim,), float(init)))


def _scaled(branch: Tensor, layer_scale: Tensor | None) -> Tensor:
    """``branch [T, B, C, H, W]`` times the per-channel ``layer_scale [C]`` (if any)."""
    return branch if layer_scale is None else branch * layer_scale.view(-1, 1, 1)


class SpikingTokenMLP(nn.Module):
    """Meta-SpikeFormer's MLP over the ``N = H*W`` tokens, residual.

    ``[T, B, dim, H, W]`` -> same shape::

        h = BN1d(fc1(LIF(x)))                   # dim -> hidden_dim, per token (Conv1d with bias)
        return x + gamma * BN1d(fc2(LIF(h)))    # back to dim; gamma: layer scale (or 1)

    Args:
        dim: channels.
        hidden_dim: hidden width (default ``4 * dim``).
        neuron: factory of the spiking neurons.
        drop_path: stochastic depth of the residual branch, in ``[0, 1)``.
        layer_scale: initial value of a learnable per-channel scale on the branch
            (E-SpikeFormer's large models: 1e-6); ``None``: no scale.
    """

    #: fc1's BatchNorm and fc2's neuron are fused in training (see
    #: :mod:`spikezoo.layers.bn_neuron`); ``False`` runs them as two modules.
    fuse_bn_neuron: bool = True

    def __init__(
        self,
        dim: int,
        hidden_dim: int | None = None,
        neuron: NeuronFactory = SDT_NEURON,
        drop_path: float = 0.0,
        layer_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.dim = positive_int("dim", dim)
        hidden_dim = 4 * dim if hidden_dim is None else positive_int("hidden_dim", hidden_dim)
        self.fc1_lif = neuron()
        self.fc1 = LayerThenBatchNorm(nn.Conv1d(dim, hidden_dim, 1), nn.BatchNorm1d(hidden_dim))
        self.fc2_lif = neuron()
        self.fc2 = LayerThenBatchNorm(nn.Conv1d(hidden_dim, dim, 1), nn.BatchNorm1d(dim))
        self.layer_scale = _layer_scale(dim, layer_scale)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """``x [T, B, dim, H, W]`` -> same shape."""
        check_tbchw(x, self.dim, "SpikingTokenMLP")
        height = x.shape[-2]
        tokens = rearrange(x, "t b c h w -> t b c (h w)")
        tokens = self.fc1_lif(tokens)
        # fc1's BatchNorm feeds fc2's neuron directly: fused (a torch.fx proxy: the plain pair)
        if self.fuse_bn_neuron and isinstance(tokens, Tensor):
            spikes = batch_norm_fire(per_step(self.fc1[0], tokens), self.fc1[1], self.fc2_lif)
        else:
            spikes = self.fc2_lif(per_step(self.fc1, tokens))
        tokens = per_step(self.fc2, spikes)
        branch = rearrange(tokens, "t b c (h w) -> t b c h w", h=height)
        return x + self.drop_path(_scaled(branch, self.layer_scale))
