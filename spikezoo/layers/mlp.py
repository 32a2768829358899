"""Spiking feed-forward blocks: the SDT MLP and SpikingResformer's group-wise FFN."""

from __future__ import annotations

from torch import Tensor, nn

from spikezoo._checks import positive_int
from spikezoo.layers.defaults import RESFORMER_NEURON, SDT_NEURON
from spikezoo.layers.temporal import ConvBN, DropPath, NeuronFactory, check_tbchw

__all__ = ["GWSFFN", "SpikingMLP"]


class SpikingMLP(nn.Module):
    """The Spike-driven Transformer MLP: ``[T, B, dim, H, W]`` -> same shape (residual).

    ``h = BN(conv1x1(LIF(x)))`` widens to ``hidden_dim``, ``o = BN(conv1x1(LIF(h)))`` narrows
    back; the result is ``x + o``. When ``hidden_dim == dim`` the SDT authors also add the
    membrane shortcut inside: ``h = h + x``, and the result is ``h + o``.

    With ``neuron_after=True`` each neuron fires on its BN output instead (QKFormer's MLP):
    ``h = LIF(BN(conv1x1(x)))``, ``o = LIF(BN(conv1x1(h)))``, and the result is ``x + o``, the
    input plus spikes; there is no inner shortcut.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int | None = None,
        neuron: NeuronFactory = SDT_NEURON,
        drop_path: float = 0.0,
        neuron_after: bool = False,
    ) -> None:
        super().__init__()
        self.dim = positive_int("dim", dim)
        hidden_dim = 4 * dim if hidden_dim is None else positive_int("hidden_dim", hidden_dim)
        self.inner_shortcut = hidden_dim == dim and not neuron_after
        self.fc1 = ConvBN(dim, hidden_dim, bias=True, neuron=neuron, neuron_after=neuron_after)
        self.fc2 = ConvBN(hidden_dim, dim, bias=True, neuron=neuron, neuron_after=neuron_after)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """``x [T, B, dim, H, W]`` -> same shape (residual)."""
        check_tbchw(x, self.dim, "SpikingMLP")
        h = self.fc1(x)
        if self.inner_shortcut:
            h = h + x
            x = h
        return x + self.drop_path(self.fc2(h))


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
        u = self.up(x)
        z = u
        for conv in self.convs:
            z = conv(z)
        return x + self.drop_path(self.down(z + u))
