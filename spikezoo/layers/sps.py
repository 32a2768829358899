"""Spiking patch splitting (SPS): the patch embedding of the Spike-driven Transformer,
Spikformer and Spikingformer."""

from __future__ import annotations

from collections.abc import Sequence

from timm.layers import register_notrace_function
from torch import Tensor, nn

from spikezoo._checks import choice, positive_int
from spikezoo.layers.defaults import SDT_NEURON
from spikezoo.layers.pooling import MaxPool2d
from spikezoo.layers.temporal import ConvBN, NeuronFactory, PerStep, check_tbchw

__all__ = ["RPE_MODES", "SPS", "parse_pooling"]


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


#: How the fifth, ``embed_dim -> embed_dim`` conv stage of :class:`SPS` ends the embedding.
RPE_MODES = ("membrane", "spikes", "plain")


class SPS(nn.Module):
    """Spiking patch splitting: ``[T, B, in_chans, H, W]`` -> ``[T, B, embed_dim, H/r, W/r]``.

    Four 3x3 conv+BN stages widen the input to ``embed_dim/8, /4, /2, 1``, each firing spikes
    (``proj_lif``) except the last with ``rpe="membrane"``. After stage ``i`` a 3x3 stride-2
    max-pool halves the resolution when ``pooling_stat[i]`` is set, so
    ``r = 2 ** (number of set flags)``. A fifth 3x3 conv+BN stage (``rpe``) follows:

    * ``"membrane"`` (Spike-driven Transformer): the last stage's pooled membrane potential
      ``feat`` gets a spiking relative position embedding, ``feat + BN(conv(LIF(feat)))``;
    * ``"spikes"`` (Spikformer): the last stage fires too, and its pooled spikes ``s`` get
      ``s + LIF(BN(conv(s)))`` (values 0, 1, 2);
    * ``"plain"`` (Spikingformer's spiking tokenizer): ``BN(conv(s))``, a membrane potential,
      without residual.

    Args:
        in_chans: input channels (3 for images, 2 for DVS event frames).
        embed_dim: output channels; a multiple of 8.
        pooling_stat: which stages pool, ``"1111"`` (ImageNet, r=16), ``"0011"`` (CIFAR, r=4),
            ``"0111"`` (DVS128 Gesture, r=8), or a sequence of four booleans.
        neuron: factory for the spiking neurons.
        rpe: how the fifth stage ends the embedding, one of :data:`RPE_MODES` (above).
    """

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 512,
        pooling_stat: str | Sequence[bool] = "1111",
        neuron: NeuronFactory = SDT_NEURON,
        rpe: str = "membrane",
    ) -> None:
        super().__init__()
        self.in_chans = in_chans = positive_int("in_chans", in_chans)
        if positive_int("embed_dim", embed_dim) % 8:
            raise ValueError(f"embed_dim must be a multiple of 8, got {embed_dim}")
        self.rpe_mode = choice("rpe", rpe, RPE_MODES)
        self.pooling = parse_pooling(pooling_stat)
        self.reduction = 2 ** sum(self.pooling)
        widths = [in_chans, embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]
        self.proj = nn.ModuleList(ConvBN(widths[i], widths[i + 1], 3) for i in range(4))
        firing_stages = 3 if rpe == "membrane" else 4
        self.proj_lif = nn.ModuleList(neuron() for _ in range(firing_stages))
        self.pool = nn.ModuleList(
            PerStep(MaxPool2d(3, 2, 1)) if p else nn.Identity() for p in self.pooling
        )
        self.rpe = ConvBN(embed_dim, embed_dim, 3, neuron=neuron if rpe == "membrane" else None)
        self.rpe_lif = neuron() if rpe == "spikes" else None

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, in_chans, H, W]`` -> ``[T, B, embed_dim, H/r, W/r]`` (see the modes above)."""
        check_sps_input(x, self.in_chans, self.pooling)
        for i, (proj, pool) in enumerate(zip(self.proj, self.pool, strict=True)):
            x = pool(proj.conv_bn_fire(x, self.proj_lif[i]) if i < len(self.proj_lif) else proj(x))
        if self.rpe_mode == "plain":
            return self.rpe(x)
        position = self.rpe(x)
        if self.rpe_lif is not None:
            position = self.rpe_lif(position)
        return x + position
