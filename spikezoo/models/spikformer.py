"""Spikformer.

Zhou et al., "Spikformer: When Spiking Neural Network Meets Transformer", ICLR 2023
(arXiv:2209.15425). The computation is the authors' (ZK-Zhou/spikformer) to the last spike: an
SPS patch embedding whose relative position embedding adds spikes to spikes, blocks of spiking
self-attention (:class:`~spikezoo.layers.SSA`) and a post-activation spiking MLP whose outputs
are spikes added to the residual stream, and a linear head on the time- and token-averaged
features (no head neuron). Weights in the authors' layout reproduce their outputs exactly (see
``tests/models``).

The authors' ImageNet file ignores any time-step setting: its forward repeats the image
``T = 4`` times, hard-wired. The ImageNet entry points default to ``time_steps=4``, which is
that computation; another ``time_steps`` runs the same network for that many steps, which the
authors' file cannot do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from timm.models import register_model
from torch import Tensor, nn

from spikezoo._checks import positive_int, positive_real
from spikezoo.layers import SPS, SSA, NeuronFactory, SpikingMLP
from spikezoo.models._base import SpikingVisionModel, drop_path_rates
from spikezoo.models._checkpoint import RenameRule, as_conv1x1
from spikezoo.models._family import ModelFamily, ReferenceCount, TinyConfig, rename_passes
from spikezoo.models._pretrained import IMAGENET_CFG, spikezoo_default_cfgs

__all__ = ["FAMILY", "Block", "Spikformer"]


class Block(nn.Module):
    """One encoder block: ``x = MLP(SSA(x))`` (each with its residual) on ``[T, B, dim, H, W]``.

    ``pre_activation`` selects Spikingformer's order in both layers (neurons before the
    convolutions, membrane potentials on the residual stream) instead of Spikformer's.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        neuron: NeuronFactory,
        pre_activation: bool,
        attn_scale: float,
        qkv_bias: bool,
        kv_first: bool,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.attn = SSA(
            dim,
            num_heads,
            scale=attn_scale,
            qkv_bias=qkv_bias,
            kv_first=kv_first,
            pre_activation=pre_activation,
            neuron=neuron,
            drop_path=drop_path,
        )
        self.mlp = SpikingMLP(
            dim,
            int(dim * mlp_ratio),
            neuron=neuron,
            drop_path=drop_path,
            pre_activation=pre_activation,
            inner_shortcut=False,
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x [T, B, dim, H, W]`` -> same shape."""
        return self.mlp(self.attn(x))


class Spikformer(SpikingVisionModel):
    """Spikformer: SPS patch embedding with a spiking RPE, then ``depth`` SSA blocks.

    Args (besides those of every family, see :class:`~spikezoo.models.SpikingVisionModel`;
    ``neuron="plif"`` has the sigmoid surrogate, alpha 4, and ``drop_path_rate`` increases
    linearly over the blocks: the authors' code never applied it, so the published models
    correspond to 0):
        embed_dim: width D (a multiple of 8 and of ``num_heads``).
        depth: number of encoder blocks L.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of D.
        pooling_stat: SPS max-pools, e.g. ``"1111"`` (ImageNet, DVS), ``"0011"`` (CIFAR).
        qkv_bias: biases in the attention's q, k, v projections (the CIFAR files' linear
            layers have them).
        attn_scale: the attention's scale (0.125; 0.25 in Spikformer's CIFAR10-DVS file).
        kv_first: compute the attention as ``q @ (k^T @ v)`` (the ImageNet files) rather than
            ``(q @ k^T) @ v`` (the CIFAR and DVS files); the same numbers, another cost.
    """

    feature_units = "blocks"
    paper = "spikformer"
    stem_prefix = "patch_embed"
    units_are_stages = False
    head_neuron = False
    #: the authors initialise only the linear head (truncated normal); convolutions keep
    #: PyTorch's initialisation
    init_layer_types = (nn.Linear,)
    #: Spikingformer's neuron-before-conv order in the blocks
    pre_activation: ClassVar[bool] = False
    #: how the SPS ends (see :class:`~spikezoo.layers.SPS`)
    rpe: ClassVar[str] = "spikes"

    def build_features(
        self,
        neuron: NeuronFactory,
        drop_path_rate: float,
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        pooling_stat: str | Sequence[bool] = "1111",
        qkv_bias: bool = False,
        attn_scale: float = 0.125,
        kv_first: bool = True,
    ) -> None:
        """SPS and the encoder blocks."""
        positive_int("depth", depth)
        positive_real("mlp_ratio", mlp_ratio)
        drop_rates = drop_path_rates(drop_path_rate, depth)
        self.num_features = self.head_hidden_size = embed_dim
        self.patch_embed = SPS(self.in_chans, embed_dim, pooling_stat, neuron, rpe=self.rpe)
        self.size_multiple = self.patch_embed.reduction
        block_args = dict(
            neuron=neuron,
            pre_activation=self.pre_activation,
            attn_scale=attn_scale,
            qkv_bias=qkv_bias,
            kv_first=kv_first,
        )
        self.blocks = nn.Sequential(
            *(Block(embed_dim, num_heads, mlp_ratio, drop_path=r, **block_args) for r in drop_rates)
        )
        self.feature_info = [
            dict(num_chs=embed_dim, reduction=self.patch_embed.reduction, module=f"blocks.{i}")
            for i in range(depth)
        ]

    def forward_stem(self, x: Tensor) -> Tensor:
        """``[T, B, in_chans, H, W]`` -> the SPS's output map."""
        return self.patch_embed(x)


# --- the authors' checkpoints --------------------------------------------------------------

#: The block keys shared by Spikformer's and Spikingformer's files (``linear``: the CIFAR
#: files' ``nn.Linear`` layers, reshaped to 1x1 convolutions by :func:`as_conv1x1`).
BLOCK_KEYS: list[RenameRule] = [
    # built by the authors but never applied in forward: dropped
    (r"^block\.\d+\.norm[12]\.", None),
    (r"^(pos_embed|norm\.)", None),
    (r"^block\.(\d+)\.attn\.([qkv]|proj)_(conv|linear)\.", r"blocks.\1.attn.\2.conv."),
    (r"^block\.(\d+)\.attn\.([qkv]|proj)_bn\.", r"blocks.\1.attn.\2.bn."),
    (r"^block\.(\d+)\.mlp\.(?:fc|mlp)([12])_(conv|linear)\.", r"blocks.\1.mlp.fc\2.conv."),
    (r"^block\.(\d+)\.mlp\.(?:fc|mlp)([12])_bn\.", r"blocks.\1.mlp.fc\2.bn."),
]

_AUTHORS_KEYS: list[RenameRule] = [
    (
        r"^patch_embed\.proj_(conv|bn)(\d?)\.",
        lambda m: f"patch_embed.proj.{int(m[2] or 0)}.{m[1]}.",
    ),
    (r"^patch_embed\.rpe_(conv|bn)\.", r"patch_embed.rpe.\1."),
    *BLOCK_KEYS,
]


# --- configurations ------------------------------------------------------------------------

CIFAR10_NORM = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
#: the pretrained cfg fields of every DVS tag
DVS_CFG = dict(
    input_size=(2, 128, 128), pool_size=(8, 8), mean=(0.0, 0.0), std=(1.0, 1.0), crop_pct=1.0
)
_NOT_RELEASED = (
    "top1 is the paper's; the authors released no weights (ZK-Zhou/spikformer issue #21).",
)
_cifar = dict(input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0, notes=_NOT_RELEASED)

_DEFAULTS = dict(
    IMAGENET_CFG,
    first_conv="patch_embed.proj.0.conv",
    license="mit",
    paper_name="Spikformer: When Spiking Neural Network Meets Transformer",
    paper_ids="arXiv:2209.15425",
    origin_url="https://github.com/ZK-Zhou/spikformer",
)

default_cfgs = spikezoo_default_cfgs(
    _DEFAULTS,
    {
        "spikformer_8_384.in1k": dict(top1=70.24, notes=_NOT_RELEASED),
        "spikformer_8_512.in1k": dict(top1=73.38, notes=_NOT_RELEASED),
        "spikformer_8_768.in1k": dict(top1=74.81, notes=_NOT_RELEASED),
        "spikformer_4_384_cifar.cifar10": dict(
            num_classes=10, top1=95.19, **_cifar, **CIFAR10_NORM
        ),
        "spikformer_2_256_cifar10dvs.cifar10_dvs": dict(
            num_classes=10, top1=80.9, notes=_NOT_RELEASED, **DVS_CFG
        ),
    },
)

FAMILY = ModelFamily(
    model_cls=Spikformer,
    default_cfgs=default_cfgs,
    authors_keys=lambda state_dict, model: as_conv1x1(
        rename_passes(_AUTHORS_KEYS)(state_dict, model), model
    ),
    citation="""@inproceedings{zhou2023spikformer,
  title     = {Spikformer: When Spiking Neural Network Meets Transformer},
  author    = {Zhou, Zhaokun and Zhu, Yuesheng and He, Chao and Wang, Yaowei and Yan, Shuicheng
               and Tian, Yonghong and Yuan, Li},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2023}
}""",
    # the authors' classes (shared/reference/families/README.md); ``unused``: the LayerNorms
    # norm1 and norm2 of every block (and in the DVS file a position embedding and a final
    # LayerNorm), built but never applied
    reference_counts=(
        ReferenceCount("spikformer_8_384", 16_828_312, unused=8 * 4 * 384),
        ReferenceCount("spikformer_8_512", 29_705_768, unused=8 * 4 * 512),
        ReferenceCount("spikformer_8_768", 66_363_208, unused=8 * 4 * 768),
        ReferenceCount("spikformer_4_384_cifar", 9_330_874, unused=4 * 4 * 384),
        ReferenceCount(
            "spikformer_2_256_cifar10dvs", 2_585_610, unused=2 * 4 * 256 + 64 * 256 + 2 * 256
        ),
    ),
    tiny=TinyConfig(
        "spikformer_8_384",
        dict(embed_dim=32, depth=2, num_heads=4, pooling_stat="0011"),
        shallow=dict(depth=1),
    ),
)


@register_model
def spikformer_8_384(pretrained: bool = False, **kwargs) -> Spikformer:
    """Spikformer 8-384, ImageNet-1k (16.8M parameters), T=4."""
    args = dict(embed_dim=384, depth=8, num_heads=8)
    return FAMILY.create("spikformer_8_384", pretrained, **dict(args, **kwargs))


@register_model
def spikformer_8_512(pretrained: bool = False, **kwargs) -> Spikformer:
    """Spikformer 8-512, ImageNet-1k (29.7M parameters), T=4."""
    args = dict(embed_dim=512, depth=8, num_heads=8)
    return FAMILY.create("spikformer_8_512", pretrained, **dict(args, **kwargs))


@register_model
def spikformer_8_768(pretrained: bool = False, **kwargs) -> Spikformer:
    """Spikformer 8-768, ImageNet-1k (66.3M parameters), T=4."""
    args = dict(embed_dim=768, depth=8, num_heads=8)
    return FAMILY.create("spikformer_8_768", pretrained, **dict(args, **kwargs))


@register_model
def spikformer_4_384_cifar(pretrained: bool = False, **kwargs) -> Spikformer:
    """Spikformer 4-384 for 32x32 CIFAR images (patch 4), T=4."""
    args = dict(img_size=32, embed_dim=384, depth=4, num_heads=12, pooling_stat="0011")
    args.update(qkv_bias=True, kv_first=False)
    return FAMILY.create("spikformer_4_384_cifar", pretrained, **dict(args, **kwargs))


@register_model
def spikformer_2_256_cifar10dvs(pretrained: bool = False, **kwargs) -> Spikformer:
    """Spikformer 2-256 for CIFAR10-DVS event frames ``[B, T, 2, 128, 128]`` (T=16)."""
    args = dict(img_size=128, in_chans=2, embed_dim=256, depth=2, num_heads=16)
    args.update(attn_scale=0.25, kv_first=False, time_steps=16)
    return FAMILY.create("spikformer_2_256_cifar10dvs", pretrained, **dict(args, **kwargs))
