"""Spike-driven Transformer (SDT v1).

Yao et al., "Spike-driven Transformer", NeurIPS 2023 (arXiv:2307.01694). The computation is the
authors' (BICLab/Spike-Driven-Transformer) to the last spike: SPS patch embedding, blocks of
spike-driven self-attention and a spiking MLP on membrane potentials, and a spiking head whose
per-step logits are averaged over time. Weights converted from the authors' checkpoints
reproduce their outputs exactly (see ``tests/models``).
"""

from __future__ import annotations

from collections.abc import Sequence

from timm.models import register_model
from torch import Tensor, nn

from spikezoo._checks import positive_int, positive_real
from spikezoo.layers import SDSA, SPS, NeuronFactory, SpikingMLP
from spikezoo.models._base import SpikingVisionModel, drop_path_rates
from spikezoo.models._checkpoint import RenameRule
from spikezoo.models._family import ModelFamily, ReferenceCount, TinyConfig, rename_passes
from spikezoo.models._pretrained import CIFAR100_NORM, IMAGENET_CFG, spikezoo_default_cfgs
from spikezoo.weights import AuthorsFile

__all__ = ["FAMILY", "Block", "SpikeDrivenTransformer"]


class Block(nn.Module):
    """One encoder block: ``x = MLP(SDSA(x))`` on ``[T, B, dim, H, W]`` membranes."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        dvs: bool,
        neuron: NeuronFactory,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.attn = SDSA(dim, num_heads, dvs=dvs, neuron=neuron, drop_path=drop_path)
        self.mlp = SpikingMLP(dim, int(dim * mlp_ratio), neuron=neuron, drop_path=drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """``x [T, B, dim, H, W]`` -> same shape."""
        return self.mlp(self.attn(x))


class SpikeDrivenTransformer(SpikingVisionModel):
    """Spike-driven Transformer: SPS patch embedding, then ``depth`` blocks.

    Args (besides those of every family, see :class:`~spikezoo.models.SpikingVisionModel`;
    ``neuron="plif"`` has the sigmoid surrogate, alpha 4, and ``drop_path_rate`` increases
    linearly over the blocks: the authors' code never applied it, so the published models
    correspond to 0):
        embed_dim: width D (a multiple of 8 and of ``num_heads``).
        depth: number of encoder blocks L.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of D.
        pooling_stat: SPS max-pools, e.g. ``"1111"`` (ImageNet), ``"0011"`` (CIFAR).
        dvs: the authors' DVS max-pools in attention (event datasets).
    """

    feature_units = "blocks"
    paper = "spike_driven_transformer"
    stem_prefix = "patch_embed"
    static_stem = ("patch_embed.proj.0",)
    units_are_stages = False

    def build_features(
        self,
        neuron: NeuronFactory,
        drop_path_rate: float,
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        pooling_stat: str | Sequence[bool] = "1111",
        dvs: bool = False,
    ) -> None:
        """SPS and the encoder blocks."""
        positive_int("depth", depth)
        positive_real("mlp_ratio", mlp_ratio)
        drop_rates = drop_path_rates(drop_path_rate, depth)
        self.num_features = self.head_hidden_size = embed_dim
        self.patch_embed = SPS(self.in_chans, embed_dim, pooling_stat, neuron)
        self.size_multiple = self.patch_embed.reduction
        self.blocks = nn.Sequential(
            *(Block(embed_dim, num_heads, mlp_ratio, dvs, neuron, rate) for rate in drop_rates)
        )
        self.feature_info = [
            dict(num_chs=embed_dim, reduction=self.patch_embed.reduction, module=f"blocks.{i}")
            for i in range(depth)
        ]

    def forward_stem(self, x: Tensor) -> Tensor:
        """``[T, B, in_chans, H, W]`` -> the SPS's output map."""
        return self.patch_embed(x)


# --- the authors' checkpoints --------------------------------------------------------------

_AUTHORS_KEYS: list[RenameRule] = [
    # built by the authors but never run in forward: dropped
    (r"^block\.\d+\.attn\.(talking_heads|attn_lif)\.", None),
    (r"^patch_embed\.rpe_lif\.", None),
    (
        r"^patch_embed\.proj_(conv|bn)(\d?)\.",
        lambda m: f"patch_embed.proj.{int(m[2] or 0)}.{m[1]}.",
    ),
    (r"^patch_embed\.proj_lif3\.", "patch_embed.rpe.neuron."),
    (r"^patch_embed\.proj_lif(\d?)\.(?!\d)", lambda m: f"patch_embed.proj_lif.{int(m[1] or 0)}."),
    (r"^patch_embed\.rpe_(conv|bn)\.", r"patch_embed.rpe.\1."),
    (r"^block\.(\d+)\.attn\.([qkv])_(conv|bn)\.", r"blocks.\1.attn.\2.\3."),
    (r"^block\.(\d+)\.attn\.talking_heads_lif\.", r"blocks.\1.attn.kv_lif."),
    (r"^block\.(\d+)\.attn\.proj_(conv|bn)\.", r"blocks.\1.attn.proj.\2."),
    (r"^block\.(\d+)\.mlp\.(fc[12])_(conv|bn)\.", r"blocks.\1.mlp.\2.\3."),
    (r"^block\.(\d+)\.mlp\.(fc[12])_lif\.", r"blocks.\1.mlp.\2.neuron."),
    (r"^block\.", "blocks."),
]


# --- configurations ------------------------------------------------------------------------

_CIFAR10 = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
_NOT_RELEASED = (
    "The authors released ImageNet-1k weights only; these come from spikezoo's recipes.",
)


_DEFAULTS = dict(
    IMAGENET_CFG,
    first_conv="patch_embed.proj.0.conv",
    # The authors' repository has no licence file.
    license="unknown",
    paper_name="Spike-driven Transformer",
    paper_ids="arXiv:2307.01694",
    origin_url="https://github.com/BICLab/Spike-Driven-Transformer",
)


_cifar = dict(input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0, notes=_NOT_RELEASED)
_dvs = dict(mean=(0.0, 0.0), std=(1.0, 1.0), crop_pct=1.0, notes=_NOT_RELEASED)

# The authors' ImageNet checkpoints are timm-script training checkpoints on Google Drive
# ({"state_dict": {"module.<key>": ...}, "args": Namespace, ...}); pretrained=True fetches them.

default_cfgs = spikezoo_default_cfgs(
    _DEFAULTS,
    {
        "sdt_8_384.in1k": dict(
            top1=72.28, authors_file=AuthorsFile.on_drive("10oH_zkwB4FDtFLgmZ_lI8e0tFjRzrXyD")
        ),
        "sdt_6_512.in1k": dict(
            top1=74.11, authors_file=AuthorsFile.on_drive("1hsShpFBKYpMK2TmpuoyBFORcLAuMHrx7")
        ),
        "sdt_8_512.in1k": dict(
            top1=74.57, authors_file=AuthorsFile.on_drive("1n59WNSBgP2VyAW2nfJX2Wvx5rgNJEMXI")
        ),
        "sdt_10_512.in1k": dict(
            top1=74.66, authors_file=AuthorsFile.on_drive("1l-c3QY5r4IFmYUmGPZXRHP_W7iC1sdP8")
        ),
        "sdt_8_768.in1k": dict(
            test_input_size=(3, 288, 288),
            top1=77.07,
            authors_file=AuthorsFile.on_drive("1R-MaeFV8d2Y0pIGBSjklOGWhaF8dLHf4"),
        ),
        "sdt_2_256_cifar.cifar10": dict(num_classes=10, **_cifar, **_CIFAR10),
        "sdt_2_512_cifar.cifar10": dict(num_classes=10, top1=95.6, **_cifar, **_CIFAR10),
        "sdt_2_512_cifar.cifar100": dict(num_classes=100, top1=78.4, **_cifar, **CIFAR100_NORM),
        "sdt_2_256_dvs128.dvs128_gesture": dict(
            num_classes=11,
            input_size=(2, 128, 128),
            pool_size=(16, 16),
            top1=99.3,
            **_dvs,
        ),
        "sdt_2_256_cifar10dvs.cifar10_dvs": dict(
            num_classes=10,
            input_size=(2, 64, 64),
            pool_size=(16, 16),
            **_dvs,
        ),
    },
)

FAMILY = ModelFamily(
    model_cls=SpikeDrivenTransformer,
    default_cfgs=default_cfgs,
    authors_keys=rename_passes(_AUTHORS_KEYS),
    citation="""@inproceedings{yao2023spikedriven,
  title     = {Spike-driven Transformer},
  author    = {Yao, Man and Hu, Jiakui and Zhou, Zhaokun and Yuan, Li and Tian, Yonghong and
               Xu, Bo and Li, Guoqi},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2023}
}""",
    # the authors' models (shared/reference/ARCHITECTURE.md)
    reference_counts=(
        ReferenceCount("sdt_8_384", 16_816_024),
        ReferenceCount("sdt_6_512", 23_373_352),
        ReferenceCount("sdt_8_512", 29_689_384),
        ReferenceCount("sdt_10_512", 36_005_416),
        ReferenceCount("sdt_8_768", 66_338_632),
        ReferenceCount("sdt_2_256_cifar", 2_566_954),
        ReferenceCount("sdt_2_512_cifar", 10_233_418),
        ReferenceCount("sdt_2_256_dvs128", 2_566_923),
        # the authors' DVS128 network with a 10-class head (their CIFAR10-DVS setting)
        ReferenceCount("sdt_2_256_cifar10dvs", 2_566_666),
    ),
    tiny=TinyConfig(
        "sdt_8_384",
        dict(embed_dim=32, depth=2, num_heads=4, pooling_stat="0011"),
        shallow=dict(depth=1),
    ),
)


@register_model
def sdt_8_384(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """SDT 8-384, ImageNet-1k (16.8M parameters)."""
    args = dict(embed_dim=384, depth=8)
    return FAMILY.create("sdt_8_384", pretrained, **dict(args, **kwargs))


@register_model
def sdt_6_512(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """SDT 6-512, ImageNet-1k (23.4M parameters)."""
    args = dict(embed_dim=512, depth=6)
    return FAMILY.create("sdt_6_512", pretrained, **dict(args, **kwargs))


@register_model
def sdt_8_512(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """SDT 8-512, ImageNet-1k (29.7M parameters)."""
    args = dict(embed_dim=512, depth=8)
    return FAMILY.create("sdt_8_512", pretrained, **dict(args, **kwargs))


@register_model
def sdt_10_512(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """SDT 10-512, ImageNet-1k (36.0M parameters)."""
    args = dict(embed_dim=512, depth=10)
    return FAMILY.create("sdt_10_512", pretrained, **dict(args, **kwargs))


@register_model
def sdt_8_768(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """SDT 8-768, ImageNet-1k (66.3M parameters)."""
    args = dict(embed_dim=768, depth=8)
    return FAMILY.create("sdt_8_768", pretrained, **dict(args, **kwargs))


# num_classes and in_chans come from the pretrained tag (e.g. ".cifar100" builds 100 classes).
_CIFAR_ARGS = dict(img_size=32, depth=2, pooling_stat="0011")


@register_model
def sdt_2_256_cifar(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """SDT 2-256 for 32x32 CIFAR images."""
    return FAMILY.create(
        "sdt_2_256_cifar", pretrained, **dict(dict(_CIFAR_ARGS, embed_dim=256), **kwargs)
    )


@register_model
def sdt_2_512_cifar(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """SDT 2-512 for 32x32 CIFAR images."""
    return FAMILY.create(
        "sdt_2_512_cifar", pretrained, **dict(dict(_CIFAR_ARGS, embed_dim=512), **kwargs)
    )


@register_model
def sdt_2_256_dvs128(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """SDT 2-256 for DVS128 Gesture event frames ``[B, T, 2, 128, 128]`` (T=16)."""
    args = dict(img_size=128, embed_dim=256, depth=2)
    args.update(pooling_stat="0111", dvs=True, time_steps=16)
    return FAMILY.create("sdt_2_256_dvs128", pretrained, **dict(args, **kwargs))


@register_model
def sdt_2_256_cifar10dvs(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """SDT 2-256 for CIFAR10-DVS event frames ``[B, T, 2, 64, 64]`` (T=10)."""
    args = dict(img_size=64, embed_dim=256, depth=2)
    args.update(pooling_stat="0011", dvs=True, time_steps=10)
    return FAMILY.create("sdt_2_256_cifar10dvs", pretrained, **dict(args, **kwargs))
