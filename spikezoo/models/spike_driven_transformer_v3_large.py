"""E-SpikeFormer's MAE-pretrained large models (Spike-driven Transformer V3; 83M and 171M).

Yao et al., "Scaling Spike-driven Transformer with Efficient Spike Firing Approximation
Training", TPAMI 2025 (arXiv:2411.16061). The computation is the authors'
(BICLab/Spike-Driven-Transformer-V3, ``SDT_V3/Classification/Model_Large/spikformer.py``) to
the last spike: a stem and three stages of spiking conv blocks, then ``depth`` transformer
blocks of spike-driven linear attention with pointwise projections and a spiking token MLP,
both with layer scales. Every neuron is an integer neuron, ``floor(clamp(x, 0, D) + 0.5) / D``
with D = ``levels`` (the authors' "1xD": T=1 real step, D levels), and the classifier reads
the pooled membranes themselves, not spikes. Tested against the authors' float64 outputs and
gradients (see ``tests/models``).
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
    LinearSpikingAttention,
    NeuronFactory,
    PointwiseProjection,
    SpikingConvBlock,
    SpikingPointwiseBlock,
    SpikingTokenMLP,
)
from spikezoo.models._base import SpikingVisionModel
from spikezoo.models._checkpoint import RenameRule
from spikezoo.models._distillation import DistilledHeads, check_distillation_head
from spikezoo.models._family import ModelFamily, ReferenceCount, TinyConfig, rename_passes
from spikezoo.models._pretrained import IMAGENET_CFG, spikezoo_default_cfgs
from spikezoo.models.spike_driven_transformer_v2 import AUTHORS_STAGE_KEYS
from spikezoo.models.spike_driven_transformer_v3 import CITATION, PAPER_CFG
from spikezoo.neurons import IntegerNeuron
from spikezoo.weights import AuthorsFile

__all__ = ["FAMILY", "Block", "SpikeDrivenTransformerV3Large", "integer_neurons"]

#: The authors' initial layer scale of the transformer blocks (``finetune=True``).
LAYER_SCALE_INIT = 1e-6


def integer_neurons(levels: int) -> NeuronFactory:
    """The large models' neurons: ``floor(clamp(x, 0, levels) + 0.5) / levels`` (rounding half
    up, as the authors' ``Model_Large`` spells it), the gradient passing on ``0 < x < levels``.
    Called with ``norm=1``, they give the spike counts themselves."""
    return partial(IntegerNeuron, levels, rounding="half_up", gradient_window="open")


def _attention_projection(dim: int) -> nn.Sequential:
    """``BN(P(x))`` per frame, ``P`` two pointwise conv + BN with a 1.5x wider middle: the
    authors' ``nn.Sequential(RepConv(dim, dim), BatchNorm1d(dim))``."""
    return nn.Sequential(PointwiseProjection(dim, dim, hidden_ratio=1.5), nn.BatchNorm2d(dim))


class Block(nn.Module):
    """E-SpikeFormer's large transformer block, ``[T, B, dim, H, W]`` -> same shape::

        x = x + P(IF(x))                      # with pointwise_branch (the 83M model)
        x = x + gamma_1 * attention(x)
        x = x + gamma_2 * MLP(x)

    Args:
        dim: channels.
        num_heads: attention heads; must divide ``dim``.
        mlp_ratio: hidden width of the MLP as a multiple of ``dim``.
        neuron: factory of the spiking neurons.
        drop_path: stochastic depth of the attention and MLP branches, in ``[0, 1)``.
        pointwise_branch: open with the :class:`~spikezoo.layers.SpikingPointwiseBlock`.
        layer_scale: initial value of the per-channel scales ``gamma``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: int,
        neuron: NeuronFactory,
        drop_path: float = 0.0,
        pointwise_branch: bool = False,
        layer_scale: float = LAYER_SCALE_INIT,
    ) -> None:
        super().__init__()
        self.rep_conv = SpikingPointwiseBlock(dim, neuron) if pointwise_branch else None
        self.attn = LinearSpikingAttention(
            dim,
            num_heads,
            attn_threshold=None,
            neuron=neuron,
            drop_path=drop_path,
            projection=_attention_projection,
            layer_scale=layer_scale,
        )
        self.mlp = SpikingTokenMLP(
            dim, dim * mlp_ratio, neuron=neuron, drop_path=drop_path, layer_scale=layer_scale
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x [T, B, dim, H, W]`` -> same shape."""
        if self.rep_conv is not None:
            x = self.rep_conv(x)
        return self.mlp(self.attn(x))


class SpikeDrivenTransformerV3Large(DistilledHeads, SpikingVisionModel):
    """E-SpikeFormer, the MAE-pretrained large models.

    Stem: 7x7 stride-2 conv + BN on the pixels. Four feature stages (``stages``), each but the
    first opened by a 3x3 stride-2 conv + BN that reads spikes:

    ====== ======================= ============================ =========
    stage  width                   blocks                       reduction
    ====== ======================= ============================ =========
    0      ``embed_dim[0] // 2``   1 conv block                 2
    1      ``embed_dim[0]``        1 conv block                 4
    2      ``embed_dim[1]``        2 conv blocks                8
    3      ``embed_dim[2]``        ``depth`` transformer blocks 16
    ====== ======================= ============================ =========

    The conv blocks are :class:`~spikezoo.layers.SpikingConvBlock` without the separable
    branch and with biases. ``head`` reads the pooled membranes of the last stage (no head
    neuron); ``head_kd`` (``kd=True``) reads their integer spike counts, ``0..D``.

    Args (besides those of every family, see :class:`~spikezoo.models.SpikingVisionModel`;
    the default ``neuron`` is :class:`~spikezoo.neurons.IntegerNeuron` with ``levels`` levels,
    ``norm = levels``, ``floor(x + 0.5)`` and the open gradient window, the authors'
    (:func:`integer_neurons`); ``"lif"``/``"plif"`` build binary multi-step neurons instead,
    SDT's surrogate; ``drop_path_rate`` rises linearly over the transformer blocks, in float32
    as the authors' ``torch.linspace``; unlike the authors' code, which applies stochastic
    depth to ``[T, B, C, N]`` along T and so drops a time step of the whole batch, spikezoo
    drops per sample, as timm does):
        levels: D, the integer spike levels (the "1x4" weights: 4, "1x8": 8).
        embed_dim: the three widths of stages 1-3 (stage 0 has half the first).
        depth: transformer blocks.
        num_heads: attention heads of every transformer block.
        mlp_ratio: hidden width of the conv blocks' 3x3 pair and of the MLPs, as a multiple
            of the width (4 in the authors' code).
        pointwise_branch: open every transformer block with a spiking pointwise branch (the
            authors' 83M model, ``choice="base"``).
        kd: add the distillation head ``head_kd`` beside ``head`` (the authors' ``--kd``).
            In training the model returns the pair ``(logits, logits_kd)``; in eval, their mean.
    """

    feature_units = "stages"
    paper = "spike_driven_transformer"
    head_neuron = False
    init_layer_types = (nn.Linear,)
    size_multiple = 16
    static_stem = ("stem",)
    # Integer spikes kept as bytes take a fifth off the peak training memory, but the per-tensor
    # work costs a sixth of a training step at the benchmark's size (small tensors): off by
    # default, set_spike_compaction(True) switches it on
    spike_compaction = False
    levels: int

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
        neuron = integer_neurons(levels) if integer else neuron
        super().__init__(time_steps=time_steps, neuron=neuron, **kwargs)
        self.levels = levels
        if integer and self.head_kd_neuron is not None:
            # the spike counts 0..levels themselves (the authors' Multispike(norm=1))
            self.head_kd_neuron = integer_neurons(levels)(norm=1)

    def build_features(
        self,
        neuron: NeuronFactory,
        drop_path_rate: float,
        embed_dim: Sequence[int] = (196, 384, 768),
        depth: int = 12,
        num_heads: int = 8,
        mlp_ratio: int = 4,
        pointwise_branch: bool = False,
        kd: bool = False,
    ) -> None:
        """The stem, the four stages and, with ``kd``, the neuron that ``head_kd`` reads."""
        if len(embed_dim) != 3:
            raise ValueError(f"embed_dim needs three widths, got {tuple(embed_dim)}")
        for i, dim in enumerate(embed_dim):
            positive_int(f"embed_dim[{i}]", dim, minimum=2 if i == 0 else 1)
        positive_int("depth", depth)
        positive_int("mlp_ratio", mlp_ratio)
        self.num_features = self.head_hidden_size = embed_dim[-1]

        widths = (embed_dim[0] // 2, *embed_dim)
        self.stem = ConvBN(self.in_chans, widths[0], 7, stride=2, bias=True)

        def down(i: int) -> ConvBN:
            return ConvBN(widths[i - 1], widths[i], 3, stride=2, bias=True, neuron=neuron)

        def conv_blocks(i: int, count: int) -> list[nn.Module]:
            return [
                SpikingConvBlock(widths[i], mlp_ratio, neuron, separable=None, bias=True)
                for _ in range(count)
            ]

        # the authors' torch.linspace(0, drop_path_rate, depth), in float32
        rates = calculate_drop_path_rates(drop_path_rate, depth)
        blocks = [
            Block(widths[3], num_heads, mlp_ratio, neuron, rates[j], pointwise_branch)
            for j in range(depth)
        ]
        self.stages = nn.Sequential(
            nn.Sequential(*conv_blocks(0, 1)),
            nn.Sequential(down(1), *conv_blocks(1, 1)),
            nn.Sequential(down(2), *conv_blocks(2, 2)),
            nn.Sequential(down(3), *blocks),
        )
        self.feature_info = [
            dict(num_chs=width, reduction=reduction, module=f"stages.{i}")
            for i, (width, reduction) in enumerate(zip(widths, (2, 4, 8, 16), strict=True))
        ]
        self.build_distillation_head(kd)
        self.head_kd_neuron = neuron() if kd else None

    def forward_stem(self, x: Tensor) -> Tensor:
        """``[T, B, in_chans, H, W]`` -> the stem's output map (membranes, half the size)."""
        return self.stem(x)

    def head_kd_input(self, x: Tensor) -> Tensor:
        """The spikes (with integer neurons: the counts ``0..levels``) of the pooled membranes
        ``x [T, B, C]`` that ``head`` reads."""
        return self.head_kd_neuron(x)


# --- the authors' checkpoints --------------------------------------------------------------

#: Authors' names inside the blocks -> spikezoo's (applied after the module renames, which
#: are Meta-SpikeFormer's: both files lay out the stem and stages alike).
_AUTHORS_BLOCK_PARTS: list[RenameRule] = [
    (r"\.(conv[12])\.0\.0\.", r".\1.conv."),
    (r"\.(conv[12])\.0\.1\.", r".\1.bn."),
    (r"\.attn\.([qkv]|proj)_conv\.", r".attn.\1."),
    (r"\.layer_scale1$", ".attn.layer_scale"),
    (r"\.layer_scale2$", ".mlp.layer_scale"),
    (r"\.mlp\.(fc[12])_conv\.", r".mlp.\1.0."),
    (r"\.mlp\.(fc[12])_bn\.", r".mlp.\1.1."),
    (r"\.rep_conv\.(conv[12])\.", r".rep_conv.projection.\1."),
]

# --- configurations ------------------------------------------------------------------------

_DEFAULTS = dict(
    IMAGENET_CFG,
    # the authors' eval transform (util/datasets.py): resize to 232, crop 224
    crop_pct=224 / 232,
    first_conv="stem.conv",
    classifier=("head", "head_kd"),
    **PAPER_CFG,
)
_AT_384 = dict(input_size=(3, 384, 384), pool_size=(24, 24), crop_pct=1.0)


def _released(drive_id: str, levels: int, top1: float | None = None) -> dict:
    """The cfg of a released main_finetune.py checkpoint (trained with kd, T=1)."""
    notes = [
        f"Trained at T=1 with D={levels} integer spike levels (1x{levels}; levels={levels}, set "
        "by this tag) and the distillation head (kd=True, set by this tag); eval returns the "
        "mean of both heads."
    ]
    if top1 is None:
        notes.append("The paper's accuracy for this configuration is not recorded here yet.")
    return dict(
        model_args=dict(kd=True, levels=levels),
        top1=top1,
        authors_file=AuthorsFile.on_drive(drive_id),
        notes=tuple(notes),
    )


default_cfgs = spikezoo_default_cfgs(
    _DEFAULTS,
    {
        "sdt_v3_12_512.in1k_1x4": _released("1f9pFflYcMacnYJc2u8cHcgMqdibv8wAO", 4),
        "sdt_v3_12_512.in1k_1x8": _released("1sh4F9LWFbKIgIVa2u0QaixBWIcbDZ7h_", 8),
        "sdt_v3_12_768.in1k_1x4": _released("1sJAjirbjVaB7gLSybvy2Xz2wwQl6gZk7", 4),
        "sdt_v3_12_768.in1k_1x8": _released("18bcS2jQD41JyoJAW9lhZOkTgUb79uShf", 8),
        "sdt_v3_12_768.in1k_1x8_384": dict(
            _released("1ooNGJRTi869e0ApZm8Oc84Mq02uXXyA8", 8, top1=86.2), **_AT_384
        ),
    },
)

FAMILY = ModelFamily(
    model_cls=SpikeDrivenTransformerV3Large,
    default_cfgs=default_cfgs,
    authors_keys=rename_passes(AUTHORS_STAGE_KEYS, _AUTHORS_BLOCK_PARTS),
    citation=CITATION,
    # the authors' spikformer12_512 / spikformer12_768 (shared/reference/families/README.md)
    reference_counts=(
        ReferenceCount("sdt_v3_12_512", 82_502_952),
        ReferenceCount("sdt_v3_12_512", 83_015_952, {"kd": True}),
        ReferenceCount("sdt_v3_12_768", 170_971_714),
        ReferenceCount("sdt_v3_12_768", 171_740_714, {"kd": True}),
    ),
    tiny=TinyConfig(
        "sdt_v3_12_512", dict(embed_dim=(8, 16, 32), depth=2, num_heads=2), shallow=dict(depth=1)
    ),
    check_checkpoint=check_distillation_head,
)


@register_model
def sdt_v3_12_512(pretrained: bool = False, **kwargs: Any) -> SpikeDrivenTransformerV3Large:
    """E-SpikeFormer 83M, ImageNet-1k (82.5M parameters; 83.0M with ``kd=True``): 12 blocks of
    width 512, each opened by a spiking pointwise branch.

    Its tags set ``kd=True`` and their ``levels`` (``"sdt_v3_12_512.in1k_1x8"``: 8).
    """
    args = dict(embed_dim=(128, 256, 512), pointwise_branch=True, time_steps=1)
    return FAMILY.create("sdt_v3_12_512", pretrained, **dict(args, **kwargs))


@register_model
def sdt_v3_12_768(pretrained: bool = False, **kwargs: Any) -> SpikeDrivenTransformerV3Large:
    """E-SpikeFormer 171M, ImageNet-1k (171.0M parameters; 171.7M with ``kd=True``): 12
    blocks of width 768.

    Its tags set ``kd=True`` and their ``levels`` (``"sdt_v3_12_768.in1k_1x8"``: 8).
    """
    args = dict(embed_dim=(196, 384, 768), time_steps=1)
    return FAMILY.create("sdt_v3_12_768", pretrained, **dict(args, **kwargs))
