"""E-SpikeFormer base models (Spike-driven Transformer V3).

Yao et al., "Scaling Spike-driven Transformer with Efficient Spike Firing Approximation
Training", IEEE TPAMI 47(4), 2025 (arXiv:2411.16061). The computation is the authors'
(BICLab/Spike-Driven-Transformer-V3, ``SDT_V3/Classification/Model_Base/models.py``,
``Spiking_vit_MetaFormer_Spike_SepConv``): Meta-SpikeFormer's five stages with integer spikes
(:class:`~spikezoo.neurons.IntegerNeuron`, 0..4 spikes per neuron in one step, trained at
T=1), spiking separable convolutions and a linear attention ``(q @ k^T) @ v`` over a four times
wider value path. Tested against the authors' float64 outputs and gradients (``tests/models``).

On a neuromorphic chip an integer spike ``n`` is ``n`` binary spikes over ``D`` virtual time
steps: :func:`spikezoo.deploy.expand_to_binary` runs a model that way, exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from timm.layers import calculate_drop_path_rates
from timm.models import register_model
from torch import Tensor, nn

from spikezoo._checks import positive_int
from spikezoo.layers import (
    ConvBN,
    IntegerLinearAttention,
    NeuronFactory,
    SpikingConvBlock,
    SpikingSepConv,
    SpikingTokenMLP,
)
from spikezoo.models._base import SpikingVisionModel
from spikezoo.models._checkpoint import RenameRule
from spikezoo.models._family import ModelFamily, ReferenceCount, TinyConfig, rename_passes
from spikezoo.models._pretrained import IMAGENET_CFG, spikezoo_default_cfgs
from spikezoo.models.spike_driven_transformer_v2 import AUTHORS_STAGE_KEYS
from spikezoo.neurons import IntegerNeuron
from spikezoo.weights import AuthorsFile

__all__ = ["FAMILY", "Block", "SpikeDrivenTransformerV3"]

#: Transformer blocks of the last two stages, fixed in the authors' code.
BLOCKS_PER_STAGE = (6, 2)


class Block(nn.Module):
    """E-SpikeFormer's transformer block: separable conv, attention, MLP, each residual.

    ``[T, B, dim, H, W]`` -> same shape.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: int,
        neuron: NeuronFactory,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.sep_conv = SpikingSepConv(dim, neuron, kernel_size=3)
        self.attn = IntegerLinearAttention(dim, num_heads, neuron, drop_path=drop_path)
        self.mlp = SpikingTokenMLP(dim, dim * mlp_ratio, neuron=neuron, drop_path=drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """``x [T, B, dim, H, W]`` -> same shape."""
        return self.mlp(self.attn(x + self.sep_conv(x)))


class SpikeDrivenTransformerV3(SpikingVisionModel):
    """E-SpikeFormer base model (Spike-driven Transformer V3), integer spikes.

    Stem: 7x7 stride-2 conv + BN on the pixels. Five feature stages (``stages``), each opened
    by a conv + BN that reads spikes (3x3, stride 2; stride 1 for the last):

    ====== ======================= ====================== =========
    stage  width                   blocks                 reduction
    ====== ======================= ====================== =========
    0      ``embed_dim[0] // 2``   1 conv block           2
    1      ``embed_dim[0]``        1 conv block           4
    2      ``embed_dim[1]``        2 conv blocks          8
    3      ``embed_dim[2]``        6 transformer blocks   16
    4      ``embed_dim[3]``        2 transformer blocks   16
    ====== ======================= ====================== =========

    The authors' model has no time axis: it is this one at ``time_steps=1`` (the default),
    whose input ``[B, C, H, W]`` becomes ``[1, B, C, H, W]``. Larger T repeats the image, and
    the logits are averaged over T as in the other families.

    Args (besides those of every family, see :class:`~spikezoo.models.SpikingVisionModel`;
    the default ``neuron`` is :class:`~spikezoo.neurons.IntegerNeuron` with ``levels``
    levels, ``norm = levels`` and ``torch.round``, and the head reads the integer count,
    ``norm = 1``; ``"lif"``/``"plif"`` build binary multi-step neurons instead, SDT's
    surrogate; ``drop_path_rate``: block ``j`` of either transformer stage takes
    ``drop_path_rate * j / 7``, the authors' schedule, which their code builds but never
    applies):
        embed_dim: the four widths above.
        num_heads: attention heads of every transformer block.
        mlp_ratio: hidden width of the conv blocks' 3x3 pair and of the MLPs, as a multiple
            of the width (4 in the authors' code).
        levels: D, the most spikes one neuron fires in one step (4 in the released weights),
            for the default integer neurons; a ``neuron`` given sets its own.
    """

    feature_units = "stages"
    paper = "spike_driven_transformer"
    init_layer_types = (nn.Linear,)
    size_multiple = 16
    static_stem = ("stem",)
    # Integer spikes kept as bytes take a fifth off the peak training memory, but the per-tensor
    # work costs a sixth of a training step at the benchmark's size (small tensors): off by
    # default, set_spike_compaction(True) switches it on
    spike_compaction = False

    def __init__(
        self,
        *,
        time_steps: int = 1,
        neuron: str | NeuronFactory | None = None,
        levels: int = 4,
        **kwargs: Any,
    ) -> None:
        levels = positive_int("levels", levels)
        integer = neuron is None
        neuron = partial(IntegerNeuron, levels) if integer else neuron
        super().__init__(time_steps=time_steps, neuron=neuron, **kwargs)
        self.levels = levels
        if integer:  # the classifier reads the integer count itself
            self.head_lif = IntegerNeuron(levels, norm=1)

    def build_features(
        self,
        neuron: NeuronFactory,
        drop_path_rate: float,
        embed_dim: Sequence[int] = (32, 64, 128, 192),
        num_heads: int = 8,
        mlp_ratio: int = 4,
    ) -> None:
        """The stem and the five stages."""
        if len(embed_dim) != 4:
            raise ValueError(f"embed_dim needs four widths, got {tuple(embed_dim)}")
        for i, dim in enumerate(embed_dim):
            positive_int(f"embed_dim[{i}]", dim, minimum=2 if i == 0 else 1)
        positive_int("mlp_ratio", mlp_ratio)
        self.num_features = self.head_hidden_size = embed_dim[-1]

        widths = (embed_dim[0] // 2, *embed_dim)
        self.stem = ConvBN(self.in_chans, widths[0], 7, stride=2, bias=True)

        def down(i: int, stride: int = 2) -> ConvBN:
            return ConvBN(widths[i - 1], widths[i], 3, stride, bias=True, neuron=neuron)

        def conv_blocks(i: int, count: int) -> list[nn.Module]:
            return [
                SpikingConvBlock(widths[i], mlp_ratio, neuron, separable=SpikingSepConv)
                for _ in range(count)
            ]

        # the authors' torch.linspace(0, drop_path_rate, depths=8), in float32
        rates = calculate_drop_path_rates(drop_path_rate, 8)

        def blocks(i: int, count: int) -> list[nn.Module]:
            return [Block(widths[i], num_heads, mlp_ratio, neuron, rates[j]) for j in range(count)]

        self.stages = nn.Sequential(
            nn.Sequential(*conv_blocks(0, 1)),
            nn.Sequential(down(1), *conv_blocks(1, 1)),
            nn.Sequential(down(2), *conv_blocks(2, 2)),
            nn.Sequential(down(3), *blocks(3, BLOCKS_PER_STAGE[0])),
            nn.Sequential(down(4, stride=1), *blocks(4, BLOCKS_PER_STAGE[1])),
        )
        self.feature_info = [
            dict(num_chs=width, reduction=reduction, module=f"stages.{i}")
            for i, (width, reduction) in enumerate(zip(widths, (2, 4, 8, 16, 16), strict=True))
        ]

    def forward_stem(self, x: Tensor) -> Tensor:
        """``[T, B, in_chans, H, W]`` -> the stem's output map (membranes, half the size)."""
        return self.stem(x)


# --- the authors' checkpoints --------------------------------------------------------------

#: Authors' names inside the blocks -> spikezoo's (applied after ``AUTHORS_STAGE_KEYS``).
_AUTHORS_BLOCK_PARTS: list[RenameRule] = [
    (r"\.(?:Conv|conv)\.pwconv1\.0\.", ".sep_conv.expand.conv."),
    (r"\.(?:Conv|conv)\.pwconv1\.1\.", ".sep_conv.expand.bn."),
    (r"\.(?:Conv|conv)\.dwconv\.0\.", ".sep_conv.depthwise.conv."),
    (r"\.(?:Conv|conv)\.dwconv\.1\.", ".sep_conv.depthwise.bn."),
    (r"\.(?:Conv|conv)\.pwconv2\.0\.", ".sep_conv.pointwise.conv."),
    (r"\.(?:Conv|conv)\.pwconv2\.1\.", ".sep_conv.pointwise.bn."),
    (r"\.(conv[12])\.weight$", r".\1.conv.weight"),
    (r"\.bn([12])\.", r".conv\1.bn."),
    (r"\.attn\.([qkv]|proj)_conv\.0\.", r".attn.\1.conv."),
    (r"\.attn\.([qkv]|proj)_conv\.1\.", r".attn.\1.bn."),
    (r"\.mlp\.(fc[12])_conv\.", r".mlp.\1.0."),
    (r"\.mlp\.(fc[12])_bn\.", r".mlp.\1.1."),
]


# --- configurations ------------------------------------------------------------------------

#: The paper and repository of both E-SpikeFormer families (base and large models).
PAPER_CFG = dict(
    # The authors' repository has no licence file.
    license="unknown",
    paper_name=(
        "Scaling Spike-driven Transformer with Efficient Spike Firing Approximation Training"
    ),
    paper_ids="arXiv:2411.16061",
    origin_url="https://github.com/BICLab/Spike-Driven-Transformer-V3",
)

_DEFAULTS = dict(IMAGENET_CFG, first_conv="stem.conv", **PAPER_CFG)

#: What every released base model was trained with: T x D = 1 x 4 (the entry points' defaults).
_TRAINED_1X4 = (
    "Trained at T x D = 1 x 4: one time step (time_steps=1) of integer spikes 0..4 (levels=4), "
    "the entry point's defaults; on a chip, 4 binary virtual steps "
    "(spikezoo.deploy.expand_to_binary).",
)

#: BibTeX of the paper, shared by both E-SpikeFormer families.
CITATION = """@article{yao2025scaling,
  title   = {Scaling Spike-Driven Transformer With Efficient Spike Firing Approximation
             Training},
  author  = {Yao, Man and Qiu, Xuerui and Hu, Tianxiang and Hu, Jiakui and Chou, Yuhong and
             Tian, Keyu and Liao, Jianxing and Leng, Luziwei and Xu, Bo and Li, Guoqi},
  journal = {IEEE Transactions on Pattern Analysis and Machine Intelligence},
  volume  = {47},
  number  = {4},
  pages   = {2973--2990},
  year    = {2025},
  doi     = {10.1109/TPAMI.2025.3530246}
}"""

default_cfgs = spikezoo_default_cfgs(
    _DEFAULTS,
    {
        "sdt_v3_t.in1k": dict(notes=("The authors released no weights of this model.",)),
        "sdt_v3_s.in1k": dict(
            # Train_Base.md links the file; neither the README nor Train_Base.md gives its
            # accuracy
            authors_file=AuthorsFile.on_drive("1LMkOTPehDNpQE79bvB7jFTf6UzDjpAHQ"),
            notes=_TRAINED_1X4,
        ),
        "sdt_v3_m.in1k": dict(
            top1=78.5,
            authors_file=AuthorsFile.on_drive("1pHrampLjyE1kLr-4DS1WgSdnCVPzL6Tq"),
            notes=_TRAINED_1X4,
        ),
        "sdt_v3_l.in1k": dict(
            top1=79.8,
            authors_file=AuthorsFile.on_drive("1pSGCOzrZNgHDxQXAp-Uelx61snIbQC1H"),
            notes=_TRAINED_1X4,
        ),
    },
)

FAMILY = ModelFamily(
    model_cls=SpikeDrivenTransformerV3,
    default_cfgs=default_cfgs,
    authors_keys=rename_passes(AUTHORS_STAGE_KEYS, _AUTHORS_BLOCK_PARTS),
    citation=CITATION,
    # the authors' Efficient_Spiking_Transformer_{t,s,m,l} (shared/reference/families/README.md)
    reference_counts=(
        ReferenceCount("sdt_v3_t", 2_702_048),
        ReferenceCount("sdt_v3_s", 5_105_608),
        ReferenceCount("sdt_v3_m", 10_023_112),
        ReferenceCount("sdt_v3_l", 18_987_504),
    ),
    tiny=TinyConfig(
        "sdt_v3_t",
        dict(embed_dim=(8, 16, 32, 40), num_heads=2),
        shallow=None,  # always 6 + 2 transformer blocks (the authors' code)
    ),
)


@register_model
def sdt_v3_t(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformerV3:
    """E-SpikeFormer base T, ImageNet-1k (2.7M parameters), T x D = 1 x 4."""
    args = dict(embed_dim=(24, 48, 96, 128))
    return FAMILY.create("sdt_v3_t", pretrained, **dict(args, **kwargs))


@register_model
def sdt_v3_s(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformerV3:
    """E-SpikeFormer base S, ImageNet-1k (5.1M parameters), T x D = 1 x 4."""
    args = dict(embed_dim=(32, 64, 128, 192))
    return FAMILY.create("sdt_v3_s", pretrained, **dict(args, **kwargs))


@register_model
def sdt_v3_m(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformerV3:
    """E-SpikeFormer base M, ImageNet-1k (10.0M parameters), T x D = 1 x 4."""
    args = dict(embed_dim=(48, 96, 192, 240))
    return FAMILY.create("sdt_v3_m", pretrained, **dict(args, **kwargs))


@register_model
def sdt_v3_l(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformerV3:
    """E-SpikeFormer base L, ImageNet-1k (19.0M parameters), T x D = 1 x 4."""
    args = dict(embed_dim=(64, 128, 256, 360))
    return FAMILY.create("sdt_v3_l", pretrained, **dict(args, **kwargs))
