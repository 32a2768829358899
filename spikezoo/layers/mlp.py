"""Spiking feed-forward blocks: the SDT / Spikformer MLP and SpikingResformer's group-wise FFN."""

from __future__ import annotations

from torch import Tensor, nn

from spikezoo._checks import boolean, positive_int
from spikezoo.layers.defaults import RESFORMER_NEURON, SDT_NEURON
from spikezoo.layers.temporal import ConvBN, DropPath, NeuronFactory, check_tbchw

__all__ = ["GWSFFN", "SpikingMLP"]


class SpikingMLP(nn.Module):
    """The spiking MLP of the Spike-driven Transformer, Spikformer and Spikingformer:
    ``[T, B, dim, H, W]`` -> same shape (residual).

    Pre-activation (SDT, Spikingformer): ``h = BN(conv1x1(LIF(x)))`` widens to ``hidden_dim``,
    ``o = BN(conv1x1(LIF(h)))`` narrows back; the result is ``x + o``, a membrane potential.
    With ``inner_shortcut`` and ``hidden_dim == dim`` the SDT authors also add the membrane
    shortcut inside: ``h = h + x``, and the result is ``h + o``.

    Post-activation (Spikformer, ``pre_activation=False``): ``o = LIF(BN(conv1x1(LIF(BN(
    conv1x1(x))))))``, spikes, and the result is ``x + o``.

    Args:
        dim: input and output channels.
        hidden_dim: hidden channels (default ``4 * dim``).
        neuron: factory of the spiking neurons.
        drop_path: stochastic depth of the residual branch.
        pre_activation: neurons before the convolutions (see above).
        inner_shortcut: the SDT authors' inner shortcut when ``hidden_dim == dim``.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int | None = None,
        neuron: NeuronFactory = SDT_NEURON,
        drop_path: float = 0.0,
        pre_activation: bool = True,
        inner_shortcut: bool = True,
    ) -> None:
        super().__init__()
        self.dim = positive_int("dim", dim)
        hidden_dim = 4 * dim if hidden_dim is None else positive_int("hidden_dim", hidden_dim)
        self.inner_shortcut = boolean("inner_shortcut", inner_shortcut) and hidden_dim == dim
        boolean("pre_activation", pre_activation)
        self.fc1 = ConvBN(dim, hidden_dim, bias=True, neuron=neuron if pre_activation else None)
        self.fc2 = ConvBN(hidden_dim, dim, bias=True, neuron=neuron)
        self.out_lif = None if pre_activation else neuron()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """``x [T, B, dim, H, W]`` -> same shape (residual)."""
        check_tbchw(x, self.dim, "SpikingMLP")
        if self.inner_shortcut:
            h = self.fc1(x) + x
            return h + self.drop_path(self.fc2(h))
        # fc1's BatchNorm feeds fc2's neuron directly: fused, then fc2 without its neuron (and
        # fused with the output neuron, post-activation)
        spikes = self.fc1.conv_bn_fire(x, self.fc2.neuron)
        if self.out_lif is not None:
            out = self.fc2.conv_bn_fire(spikes, self.out_lif, fired=True)
        else:
            out = self.fc2.conv_bn(spikes)
        return x + self.drop_path(out)


class GWSFFN(nn.Module):
    """Group-wise spiking feed-forward network (SpikingResformer's GWFFN), residual.

    ``[T, B, dim, H, W]`` -> same shape::

        u = BN(conv1x1(LIF(x)))                 # dim -> ratio*dim
        z = BN(gconv3x3(LIF(z)))                # num_conv times from z = u; groups of group_size
        out = x + BN(conv1x1(LIF(z + u)))       # back to dim
    """

    def __init__(
        self,
        dim: int,
        ratio: int = 4,
        group_size: int = 64,
        num_conv: int = 1,
        neuron: NeuronFactory = RESFORMER_NEURON,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim = positive_int("dim", dim)
        hidden = dim * positive_int("ratio", ratio)
        group_size = positive_int("group_size", group_size)
        positive_int("num_conv", num_conv, minimum=0)
        if hidden % group_size:
            raise ValueError(
                f"group_size ({group_size}) must divide the hidden width dim*ratio = "
                f"{dim}*{ratio} = {hidden}"
            )
        self.up = ConvBN(dim, hidden, neuron=neuron)
        self.convs = nn.ModuleList(
            ConvBN(hidden, hidden, 3, groups=hidden // group_size, neuron=neuron)
            for _ in range(num_conv)
        )
        self.down = ConvBN(hidden, dim, neuron=neuron)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """``x [T, B, dim, H, W]`` -> ``x + ffn(x)``, same shape."""
        check_tbchw(x, self.dim, "GWSFFN")
        if not self.convs:
            u = self.up(x)
            return x + self.drop_path(self.down(u + u))
        # up's BatchNorm feeds the first grouped convolution's neuron directly: fused, and its
        # output u kept for the sum
        spikes, u = self.up.conv_bn_fire(x, self.convs[0].neuron, with_output=True)
        z = self.convs[0].conv_bn(spikes)
        for conv in self.convs[1:]:
            z = conv(z)
        return x + self.drop_path(self.down(z + u))
