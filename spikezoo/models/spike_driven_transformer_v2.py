"""Meta-SpikeFormer (Spike-driven Transformer V2).

Yao et al., "Spike-driven Transformer V2: Meta Spiking Neural Network Architecture Inspiring
the Design of Next-generation Neuromorphic Chips", ICLR 2024 (arXiv:2404.03663). The
computation is the authors' (BICLab/Spike-Driven-Transformer-V2, ``classification/models.py``)
to the last spike: two stages of spiking separable-conv blocks, then two of spike-driven
linear attention with RepConv projections and a spiking token MLP, and a spiking head whose
per-step logits are averaged over time. Tested against the authors' float64 outputs and
gradients (see ``tests/models``).
"""

from __future__ import annotations

from collections.abc import Sequence

from timm.layers import calculate_drop_path_rates
from timm.models import register_model
from torch import Tensor, nn

from spikezoo._checks import positive_int
from spikezoo.layers import (
    ConvBN,
    LinearSpikingAttention,
    NeuronFactory,
    SpikingConvBlock,
    SpikingTokenMLP,
)
from spikezoo.models._base import SpikingVisionModel
from spikezoo.models._checkpoint import RenameRule
from spikezoo.models._distillation import DistilledHeads, check_distillation_head
from spikezoo.models._family import ModelFamily, ReferenceCount, TinyConfig, rename_passes
from spikezoo.models._pretrained import IMAGENET_CFG, spikezoo_default_cfgs
from spikezoo.weights import AuthorsFile

__all__ = ["FAMILY", "Block", "SpikeDrivenTransformerV2"]

#: Transformer blocks of the last two stages, fixed in the authors' code.
BLOCKS_PER_STAGE = (6, 2)


class Block(nn.Module):
    """Meta-SpikeFormer's transformer block: ``x = MLP(attention(x))``, both residual.

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
        self.attn = LinearSpikingAttention(dim, num_heads, neuron=neuron, drop_path=drop_path)
        self.mlp = SpikingTokenMLP(dim, dim * mlp_ratio, neuron=neuron, drop_path=drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """``x [T, B, dim, H, W]`` -> same shape."""
        return self.mlp(self.attn(x))


class SpikeDrivenTransformerV2(DistilledHeads, SpikingVisionModel):
    """Meta-SpikeFormer (Spike-driven Transformer V2).

    Stem: 7x7 stride-2 conv + BN on the pixels. Five feature stages (``stages``), each opened
    by a conv + BN that reads spikes (3x3, stride 2; stride 1 for the last):

    ====== ======================= ====================== =========
    stage  width                   blocks                 reduction
    ====== ======================= ====================== =========
    0      ``embed_dims[0] // 2``  1 conv block           2
    1      ``embed_dims[0]``       1 conv block           4
    2      ``embed_dims[1]``       2 conv blocks          8
    3      ``embed_dims[2]``       6 transformer blocks   16
    4      ``embed_dims[3]``       2 transformer blocks   16
    ====== ======================= ====================== =========

    Args (besides those of every family, see :class:`~spikezoo.models.SpikingVisionModel`;
    ``neuron="plif"`` has the sigmoid surrogate, alpha 4; ``drop_path_rate`` acts on the
    transformer blocks: block ``j`` of either stage takes ``drop_path_rate * j / 7`` (in
    float32), the authors' schedule for ``depths=8``, which their code builds but never
    applies, so their models correspond to 0):
        embed_dims: the four widths above.
        num_heads: attention heads of every transformer block.
        mlp_ratio: hidden width of the conv blocks' 3x3 pair and of the MLPs, as a multiple
            of the width (4 in the authors' code).
        kd: add the distillation head ``head_kd`` beside ``head`` (the authors' ``--kd``).
            In training the model returns the pair ``(logits, logits_kd)``, as timm's
            distilled DeiT does with ``set_distilled_training``; in eval, their mean.
    """

    feature_units = "stages"
    paper = "spike_driven_transformer"
    init_layer_types = (nn.Linear,)
    size_multiple = 16
    static_stem = ("stem",)

    def build_features(
        self,
        neuron: NeuronFactory,
        drop_path_rate: float,
        embed_dims: Sequence[int] = (128, 256, 512, 640),
        num_heads: int = 8,
        mlp_ratio: int = 4,
        kd: bool = False,
    ) -> None:
        """The stem and the five stages; the distillation head's name with ``kd``."""
        if len(embed_dims) != 4:
            raise ValueError(f"embed_dims needs four widths, got {tuple(embed_dims)}")
        for i, dim in enumerate(embed_dims):
            positive_int(f"embed_dims[{i}]", dim, minimum=2 if i == 0 else 1)
        positive_int("mlp_ratio", mlp_ratio)
        self.num_features = self.head_hidden_size = embed_dims[-1]

        widths = (embed_dims[0] // 2, *embed_dims)
        self.stem = ConvBN(self.in_chans, widths[0], 7, stride=2, bias=True)

        def down(i: int, stride: int = 2) -> ConvBN:
            return ConvBN(widths[i - 1], widths[i], 3, stride, bias=True, neuron=neuron)

        def conv_blocks(i: int, count: int) -> list[nn.Module]:
            return [SpikingConvBlock(widths[i], mlp_ratio, neuron) for _ in range(count)]

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
        self.build_distillation_head(kd)

    def forward_stem(self, x: Tensor) -> Tensor:
        """``[T, B, in_chans, H, W]`` -> the stem's output map (membranes, half the size)."""
        return self.stem(x)


# --- the authors' checkpoints --------------------------------------------------------------

#: Authors' module -> spikezoo's, outside the blocks; E-SpikeFormer's files keep this layout
#: (``spike_driven_transformer_v3*.py`` use these rules too).
AUTHORS_STAGE_KEYS: list[RenameRule] = [
    (r"^downsample1_1\.encode_(conv|bn)\.", r"stem.\1."),
    (r"^ConvBlock1_1\.0\.", "stages.0.0."),
    (r"^downsample1_2\.encode_(conv|bn)\.", r"stages.1.0.\1."),
    (r"^ConvBlock1_2\.0\.", "stages.1.1."),
    (r"^downsample2\.encode_(conv|bn)\.", r"stages.2.0.\1."),
    (r"^ConvBlock2_([12])\.0\.", r"stages.2.\1."),
    (r"^downsample([34])\.encode_(conv|bn)\.", r"stages.\1.0.\2."),
    (r"^block([34])\.(\d+)\.", lambda m: f"stages.{m[1]}.{int(m[2]) + 1}."),
]

#: Authors' names inside the blocks -> spikezoo's (applied after ``AUTHORS_STAGE_KEYS``).
_AUTHORS_BLOCK_PARTS: list[RenameRule] = [
    (r"\.Conv\.pwconv1\.", ".sep_conv.expand.conv."),
    (r"\.Conv\.bn1\.", ".sep_conv.expand.bn."),
    (r"\.Conv\.dwconv\.", ".sep_conv.depthwise."),
    (r"\.Conv\.pwconv2\.", ".sep_conv.pointwise."),
    (r"\.Conv\.bn2\.", ".sep_conv.bn."),
    (r"\.(conv[12])\.weight$", r".\1.conv.weight"),
    (r"\.bn([12])\.", r".conv\1.bn."),
    (r"\.attn\.([qkv]|proj)_conv\.0\.body\.0\.", r".attn.\1.0.conv1x1."),
    (r"\.attn\.([qkv]|proj)_conv\.0\.body\.1\.", r".attn.\1.0.bn_pad."),
    (r"\.attn\.([qkv]|proj)_conv\.0\.body\.2\.0\.", r".attn.\1.0.depthwise."),
    (r"\.attn\.([qkv]|proj)_conv\.0\.body\.2\.1\.", r".attn.\1.0.pointwise."),
    (r"\.attn\.([qkv]|proj)_conv\.0\.body\.2\.2\.", r".attn.\1.0.bn."),
    (r"\.attn\.([qkv]|proj)_conv\.1\.", r".attn.\1.1."),
    (r"\.mlp\.(fc[12])_conv\.", r".mlp.\1.0."),
    (r"\.mlp\.(fc[12])_bn\.", r".mlp.\1.1."),
]


# --- configurations ------------------------------------------------------------------------

_DEFAULTS = dict(
    IMAGENET_CFG,
    first_conv="stem.conv",
    # The authors' repository has no licence file.
    license="unknown",
    paper_name=(
        "Spike-driven Transformer V2: Meta Spiking Neural Network Architecture Inspiring the "
        "Design of Next-generation Neuromorphic Chips"
    ),
    paper_ids="arXiv:2404.03663",
    origin_url="https://github.com/BICLab/Spike-Driven-Transformer-V2",
)

#: The tag of the authors' released weights, trained with the distillation head.
_KD_TAG = "in1k_kd"

_NOT_RELEASED = ("The authors released weights of the 55M model (sdt_v2_8_512) only.",)

default_cfgs = spikezoo_default_cfgs(
    _DEFAULTS,
    {
        "sdt_v2_8_384.in1k": dict(notes=_NOT_RELEASED),
        f"sdt_v2_8_512.{_KD_TAG}": dict(
            classifier=("head", "head_kd"),
            model_args=dict(kd=True),
            top1=80.0,
            # main_finetune.py checkpoints ({"model": ..., "args": Namespace, ...}) in one
            # Google Drive folder, to be downloaded by hand
            authors_file=AuthorsFile(
                page="https://drive.google.com/drive/folders/12JcIRG8BF6JcgPsXIetSS14udtHXeSSx"
            ),
            notes=(
                "Trained at T=4 (the entry point's default time_steps) with the distillation "
                "head (kd=True, set by this tag); eval returns the mean of both heads.",
            ),
        ),
        "sdt_v2_8_768.in1k": dict(notes=_NOT_RELEASED),
    },
)

FAMILY = ModelFamily(
    model_cls=SpikeDrivenTransformerV2,
    default_cfgs=default_cfgs,
    authors_keys=rename_passes(AUTHORS_STAGE_KEYS, _AUTHORS_BLOCK_PARTS),
    citation="""@inproceedings{yao2024spikedrivenv2,
  title     = {Spike-driven Transformer V2: Meta Spiking Neural Network Architecture Inspiring
               the Design of Next-generation Neuromorphic Chips},
  author    = {Yao, Man and Hu, JiaKui and Hu, Tianxiang and Xu, Yifan and Zhou, Zhaokun and
               Tian, Yonghong and Xu, Bo and Li, Guoqi},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2024}
}""",
    # the authors' models (shared/reference/ARCHITECTURE.md), without and with the kd head
    reference_counts=(
        ReferenceCount("sdt_v2_8_384", 31_333_864),
        ReferenceCount("sdt_v2_8_512", 55_350_248),
        ReferenceCount("sdt_v2_8_768", 123_741_160),
        ReferenceCount("sdt_v2_8_384", 31_814_864, {"kd": True}),
        ReferenceCount("sdt_v2_8_512", 55_991_248, {"kd": True}),
        ReferenceCount("sdt_v2_8_768", 124_702_160, {"kd": True}),
    ),
    tiny=TinyConfig(
        "sdt_v2_8_384",
        dict(embed_dims=(8, 16, 32, 40), num_heads=2),
        shallow=None,  # always 6 + 2 transformer blocks (the authors' code)
    ),
    check_checkpoint=check_distillation_head,
)


@register_model
def sdt_v2_8_384(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformerV2:
    """Meta-SpikeFormer 8-384, ImageNet-1k (31.3M parameters; 31.8M with ``kd=True``)."""
    args = dict(embed_dims=(96, 192, 384, 480))
    return FAMILY.create("sdt_v2_8_384", pretrained, **dict(args, **kwargs))


@register_model
def sdt_v2_8_512(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformerV2:
    """Meta-SpikeFormer 8-512, ImageNet-1k (55.4M parameters; 56.0M with ``kd=True``).

    ``kd`` defaults to ``True`` for the ``in1k_kd`` weights (``"sdt_v2_8_512.in1k_kd"``, or
    ``pretrained=True`` without a tag).
    """
    args = dict(embed_dims=(128, 256, 512, 640))
    return FAMILY.create("sdt_v2_8_512", pretrained, **dict(args, **kwargs))


@register_model
def sdt_v2_8_768(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformerV2:
    """Meta-SpikeFormer 8-768, ImageNet-1k (123.7M parameters; 124.7M with ``kd=True``)."""
    args = dict(embed_dims=(192, 384, 768, 960))
    return FAMILY.create("sdt_v2_8_768", pretrained, **dict(args, **kwargs))
