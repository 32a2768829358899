"""Spiking patch splitting (SPS), the Spike-driven Transformer's patch embedding."""

from __future__ import annotations

from collections.abc import Sequence

from timm.layers import register_notrace_function
from torch import Tensor, nn

from spikezoo._checks import positive_int
from spikezoo.layers.defaults import SDT_NEURON
from spikezoo.layers.temporal import ConvBN, NeuronFactory, PerStep, check_tbchw

__all__ = ["SPS", "parse_pooling"]


def parse_pooling(pooling: str | Sequence[bool]) -> tuple[bool, ...]:
    """Read the four max-pool flags: ``"0011"``, ``(False, False, True, True)`` or 0/1s."""
    if isinstance(pooling, str):
        if len(pooling) != 4 or set(pooling) - {"0", "1"}:
            raise ValueError(f"pooling_stat must be four '0'/'1' characters, got {pooling!r}")
        return tuple(c == "1" for c in pooling)
    flags = tuple(pooling)
    if len(flags) != 4:
        raise ValueError(f"pooling_stat must have four flags, got {len(flags)}")
    if any(p not in (0, 1) for p in flags):
        raise ValueError(
            f"pooling_stat flags must be booleans (or 0/1), got {pooling!r}; "
            "as text, write one string such as '0011'"
        )
    return tuple(bool(p) for p in flags)


@register_notrace_function  # torch.fx cannot branch on the shape of its proxies
def check_sps_input(x: Tensor, in_chans: int, pooling: tuple[bool, ...]) -> None:
    """Raise ``ValueError`` unless ``x`` is ``[T, B, in_chans, H, W]`` that ``pooling`` divides."""
    check_tbchw(x, in_chans, "SPS")
    height, width = x.shape[-2:]
    reduction = 2 ** sum(pooling)
    if height % reduction or width % reduction:
        raise ValueError(
            f"SPS with pooling {''.join('01'[p] for p in pooling)} halves the resolution "
            f"{sum(pooling)} times, so H and W must be multiples of {reduction}; "
            f"got {height}x{width}"
        )


class SPS(nn.Module):
    """Spiking patch splitting: ``[T, B, in_chans, H, W]`` -> ``[T, B, embed_dim, H/r, W/r]``.

    Four 3x3 conv+BN stages widen the input to ``embed_dim/8, /4, /2, 1``; the first three
    fire spikes (``proj_lif``). After stage ``i`` a 3x3 stride-2 max-pool halves the resolution
    when ``pooling_stat[i]`` is set, so ``r = 2 ** (number of set flags)``. The last stage's
    membrane potential ``feat`` gets a spiking relative position embedding added:
    ``feat + BN(conv(LIF(feat)))``.

    Args:
        in_chans: input channels (3 for images, 2 for DVS event frames).
        embed_dim: output channels; a multiple of 8.
        pooling_stat: which stages pool, ``"1111"`` (ImageNet, r=16), ``"0011"`` (CIFAR, r=4),
            ``"0111"`` (DVS128 Gesture, r=8), or a sequence of four booleans.
        neuron: factory for the spiking neurons.
    """

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 512,
        pooling_stat: str | Sequence[bool] = "1111",
        neuron: NeuronFactory = SDT_NEURON,
    ) -> None:
        super().__init__()
        self.in_chans = in_chans = positive_int("in_chans", in_chans)
        if positive_int("embed_dim", embed_dim) % 8:
            raise ValueError(f"embed_dim must be a multiple of 8, got {embed_dim}")
        self.pooling = parse_pooling(pooling_stat)
        self.reduction = 2 ** sum(self.pooling)
        widths = [in_chans, embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]
        self.proj = nn.ModuleList(ConvBN(widths[i], widths[i + 1], 3) for i in range(4))
        self.proj_lif = nn.ModuleList(neuron() for _ in range(3))
        self.pool = nn.ModuleList(
            PerStep(nn.MaxPool2d(3, 2, 1)) if p else nn.Identity() for p in self.pooling
        )
        self.rpe = ConvBN(embed_dim, embed_dim, 3, neuron=neuron)

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, in_chans, H, W]`` -> ``[T, B, embed_dim, H/r, W/r]`` membrane potentials."""
        check_sps_input(x, self.in_chans, self.pooling)
        for proj, lif, pool in zip(self.proj[:-1], self.proj_lif, self.pool[:-1], strict=True):
            x = pool(proj.conv_bn_fire(x, lif))
        feat = self.pool[-1](self.proj[-1](x))
        return feat + self.rpe(feat)
