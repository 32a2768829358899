"""QKFormer (hierarchical spiking transformer, HST).

Zhou et al., "QKFormer: Hierarchical Spiking Transformer using Q-K Attention", NeurIPS 2024
(arXiv:2403.16552). The computation is the authors' (zhouchenlin2096/QKFormer@c2a00e8): SEW
patch embeddings between stages, token Q-K attention in the early stages and Spikformer's SSA in
the last, conv MLPs, every unit conv-BN-LIF (spikes out, spike sums on the residual path), and a
linear head on the mean over tokens and time. Weights converted from the authors' checkpoints
reproduce their outputs exactly (see ``tests/models``).

Two facts of the authors' last-stage SSA:

- its projection neuron runs over the flattened ``T*B`` axis, so the membrane carries from
  sample to sample and from step to step, and the outputs depend on the batch size. The
  released weights were trained this way (QKFormer issue #14), so it is the default here;
  ``proj_neuron_over_batch=False`` gives the per-step neuron, for training new models.
- its output is reshaped to ``(W, H)`` instead of ``(H, W)``, which only square inputs survive
  (the residual sum fails for any other). spikezoo keeps ``(H, W)``: identical for the square
  inputs the authors' code runs, and the natural map for others.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from timm.models import register_model
from torch import Tensor, nn

from spikezoo._checks import choice, positive_int, positive_real
from spikezoo.layers import SSA, NeuronFactory, SpikingMLP
from spikezoo.layers.qkformer import SEWPatchEmbedding, TokenQKAttention
from spikezoo.models._base import SpikingVisionModel, drop_path_rates
from spikezoo.models._family import ModelFamily, ReferenceCount, TinyConfig
from spikezoo.models._pretrained import CIFAR100_NORM, IMAGENET_CFG, spikezoo_default_cfgs
from spikezoo.weights import AuthorsFile

__all__ = ["FAMILY", "QKFormer"]


@dataclass(frozen=True)
class _Layout:
    """One authors' file: widths as divisors of ``embed_dim`` and where the resolution halves."""

    #: the first patch embedding: (divisor of embed_dim, max-pool) per unit; shortcut tap
    stem: tuple[tuple[int, bool], ...]
    stem_shortcut_from: int
    #: max-pool per unit of the patch embeddings between stages (two units each)
    embedding_pooling: tuple[bool, bool]
    #: stage widths as divisors of embed_dim
    stage_divisors: tuple[int, ...]
    #: blocks in every stage but the last (which has the rest of ``depth``)
    early_blocks: tuple[int, ...]


_LAYOUTS = {
    # imagenet/qkformer.py: 224 px -> 56, 28, 14 tokens a side
    "imagenet": _Layout(((8, True), (4, True), (4, False)), 1, (True, False), (4, 2, 1), (1, 2)),
    # cifar10/model.py: 32 px -> 32, 16, 8
    "cifar": _Layout(((8, False), (4, False)), 1, (False, True), (4, 2, 1), (1, 1)),
    # dvs128-gesture/model.py: 128 px -> 16, 8
    "dvs": _Layout(((16, False), (8, True), (4, True), (2, True)), 2, (False, True), (2, 1), (1,)),
}


class QKFormer(SpikingVisionModel):
    """QKFormer: a SEW patch embedding, then stages of (attention, MLP) pairs, each stage but
    the first opened by a SEW patch embedding that halves the resolution.

    The early stages attend with :class:`~spikezoo.layers.TokenQKAttention`, the last with
    :class:`~spikezoo.layers.SSA` (``q @ (k^T @ v) * 0.125``). The linear head reads the
    features averaged over tokens, at every step (no head neuron).

    Args (besides those of every family, see :class:`~spikezoo.models.SpikingVisionModel`;
    ``neuron="plif"`` has the sigmoid surrogate, alpha 4; ``drop_path_rate`` increases
    linearly over the blocks: the authors' code builds none, so the published models
    correspond to 0):
        embed_dim: width of the last stage (the earlier ones have 1/4 and 1/2 of it, the
            DVS layout 1/2).
        depth: blocks in all, as the authors' constructor counts them: 1 in stage 1, 2
            (ImageNet) or 1 (CIFAR) in stage 2 and the rest in stage 3; DVS: 1 in stage 1 and
            the rest in stage 2 (the authors' DVS file builds 1 + 1 whatever its ``depths``).
        num_heads: heads of every stage, or one number per stage (the CIFAR and DVS files
            hard-wire 8 and 16 whatever they are given; the entry points pass those).
        mlp_ratio: MLP hidden width as a multiple of the stage width.
        layout: the authors' file: ``"imagenet"`` (reduction 4, 8, 16), ``"cifar"`` (1, 2, 4)
            or ``"dvs"`` (8, 16).
        proj_neuron_over_batch: the last stage's SSA runs its projection neuron over the
            flattened ``T*B`` axis, as the authors' code does and their weights need (outputs
            depend on the batch); ``False`` runs it per step, for training new models.
    """

    feature_units = "stages"
    paper = "qkformer"
    static_stem = ("stem.convs.0", "stem.pools.0")
    head_neuron = False
    init_layer_types = (nn.Linear,)

    def build_features(
        self,
        neuron: NeuronFactory,
        drop_path_rate: float,
        embed_dim: int = 384,
        depth: int = 10,
        num_heads: int | Sequence[int] = 6,
        mlp_ratio: float = 4.0,
        layout: str = "imagenet",
        proj_neuron_over_batch: bool = True,
    ) -> None:
        """The first patch embedding and the stages."""
        arrangement = _LAYOUTS[choice("layout", layout, tuple(_LAYOUTS))]
        positive_int("embed_dim", embed_dim)
        positive_real("mlp_ratio", mlp_ratio)
        early = sum(arrangement.early_blocks)
        if positive_int("depth", depth) <= early:
            raise ValueError(
                f"depth counts every block, {early} of them before the last stage in the "
                f"{layout!r} layout, so it must be at least {early + 1}; got {depth}"
            )
        divisors = arrangement.stage_divisors
        unreachable = [d for d in (*divisors, *(d for d, _ in arrangement.stem)) if embed_dim % d]
        if unreachable:
            raise ValueError(
                f"embed_dim must be a multiple of {max(unreachable)} in the {layout!r} layout "
                f"(its narrowest unit has embed_dim/{max(unreachable)} channels); got {embed_dim}"
            )
        heads = _per_stage("num_heads", num_heads, len(divisors))
        blocks = (*arrangement.early_blocks, depth - early)
        rates = iter(drop_path_rates(drop_path_rate, depth))
        widths = [embed_dim // d for d in divisors]
        self.num_features = self.head_hidden_size = embed_dim

        self.stem = SEWPatchEmbedding(
            self.in_chans,
            [embed_dim // d for d, _ in arrangement.stem],
            [pool for _, pool in arrangement.stem],
            arrangement.stem_shortcut_from,
            neuron,
        )
        reduction = self.stem.reduction
        stages, self.feature_info = [], []
        for i, (width, stage_heads, count) in enumerate(zip(widths, heads, blocks, strict=True)):
            units: list[nn.Module] = []
            if i > 0:
                embedding = SEWPatchEmbedding(
                    widths[i - 1], (width, width), arrangement.embedding_pooling, 0, neuron
                )
                reduction *= embedding.reduction
                units.append(embedding)
            last = i == len(widths) - 1
            for _ in range(count):
                rate = next(rates)
                if last:
                    attention = SSA(
                        width,
                        stage_heads,
                        neuron=neuron,
                        drop_path=rate,
                        proj_neuron_over_batch=proj_neuron_over_batch,
                    )
                else:
                    attention = TokenQKAttention(width, stage_heads, neuron=neuron, drop_path=rate)
                hidden = int(width * mlp_ratio)
                mlp = SpikingMLP(
                    width, hidden, neuron, rate, pre_activation=False, inner_shortcut=False
                )
                units += [attention, mlp]
            stages.append(nn.Sequential(*units))
            self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.size_multiple = reduction

    def forward_stem(self, x: Tensor) -> Tensor:
        """``[T, B, in_chans, H, W]`` -> the first patch embedding's output (spike sums)."""
        return self.stem(x)


def _per_stage(name: str, value: int | Sequence[int], stages: int) -> tuple[int, ...]:
    """One positive int per stage from an int or a sequence of ``stages`` of them."""
    values = (value,) * stages if isinstance(value, int) else tuple(value)
    if len(values) != stages:
        raise ValueError(f"{name} needs one entry per stage ({stages}), got {len(values)}")
    return tuple(positive_int(f"{name}[{i}]", v) for i, v in enumerate(values))


# --- the authors' checkpoints --------------------------------------------------------------

# The main-path units of a patch embedding are named proj, proj1, proj2, ... (the first) and
# proj3, proj4 (ImageNet, CIFAR) or proj, proj4 (DVS) in the later ones.
_STAGE_EMBEDDING_UNIT = {"": 0, "3": 0, "4": 1}


def _rename_authors_keys(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """The authors' names (all three files); their Conv1d weights ``[C, C, 1]`` as the 1x1
    Conv2d weights ``[C, C, 1, 1]`` of the same computation."""
    mapped = {}
    for key, value in state_dict.items():
        key = _rename_key(key)
        if re.search(r"\.(q|k|v|proj)\.conv\.weight$", key) and value.dim() == 3:
            value = value.unsqueeze(-1)
        mapped[key] = value
    return mapped


def _rename_key(key: str) -> str:
    embedding = re.match(r"^patch_embed(\d)\.proj(_res|\d?)_(conv|bn)\.(.+)$", key)
    if embedding:
        index, unit, layer, rest = embedding.groups()
        prefix = "stem" if index == "1" else f"stages.{int(index) - 1}.0"
        if unit == "_res":
            return f"{prefix}.shortcut.{layer}.{rest}"
        position = int(unit or 0) if index == "1" else _STAGE_EMBEDDING_UNIT[unit]
        return f"{prefix}.convs.{position}.{layer}.{rest}"
    block = re.match(r"^stage(\d)\.(\d+)\.(tssa|attn|ssa|mlp)\.(.+)$", key)
    if block:
        stage, index, part, rest = block.groups()
        first = 0 if stage == "1" else 1  # the patch embedding opens the later stages
        unit = first + 2 * int(index) + (part == "mlp")
        rest = re.sub(r"^(?:fc|mlp)([12])_(conv|bn)\.", r"fc\1.\2.", rest)
        if part == "tssa":
            rest = re.sub(r"^([qk]|proj)_(conv|bn)\.", r"\1.\2.", rest)
        elif part != "mlp":
            rest = re.sub(r"^([qkv]|proj)_(conv|bn)\.", r"\1.\2.", rest)
        return f"stages.{int(stage) - 1}.{unit}.{rest}"
    return key


# --- configurations ------------------------------------------------------------------------

_CIFAR10 = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
_NOT_RELEASED = ("The authors released ImageNet-1k weights only.",)

_DEFAULTS = dict(
    IMAGENET_CFG,
    first_conv="stem.convs.0.conv",
    # The authors' repository has no licence file.
    license="unknown",
    paper_name="QKFormer: Hierarchical Spiking Transformer using Q-K Attention",
    paper_ids="arXiv:2403.16552",
    origin_url="https://github.com/zhouchenlin2096/QKFormer",
)


def _on_baidu(share: str) -> AuthorsFile:
    """A file of the authors' Baidu Netdisk shares (download password ``abcd``), linked from
    their README until commit c2a00e8; Baidu needs a browser, so it is downloaded by hand."""
    return AuthorsFile(page=f"https://pan.baidu.com/s/{share}", password="abcd")


_cifar = dict(input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0, notes=_NOT_RELEASED)

default_cfgs = spikezoo_default_cfgs(
    _DEFAULTS,
    {
        "qkformer_10_384.in1k": dict(top1=78.80, authors_file=_on_baidu("1mX0jQyKZ5p6ZDzvMVeY20A")),
        "qkformer_10_512.in1k": dict(top1=82.04, authors_file=_on_baidu("1luWM1L8gV3BI7REh4MgbkA")),
        "qkformer_10_768.in1k": dict(top1=84.22, authors_file=_on_baidu("1WJW1wC0Vs-lvGjYr5pGV_w")),
        "qkformer_10_768.in1k_288": dict(
            input_size=(3, 288, 288),
            pool_size=(18, 18),
            top1=85.25,
            authors_file=_on_baidu("1UaqY98UqJPJbosKfY103Jg"),
        ),
        "qkformer_10_768.in1k_384": dict(
            input_size=(3, 384, 384),
            pool_size=(24, 24),
            top1=85.65,
            authors_file=_on_baidu("1gRAZR9gkMr5ScHK-kwZAnw"),
        ),
        # the paper's accuracies (the repository's logs: best 96.21 and 81.22)
        "qkformer_4_384_cifar.cifar10": dict(num_classes=10, top1=96.18, **_cifar, **_CIFAR10),
        "qkformer_4_384_cifar.cifar100": dict(
            num_classes=100, top1=81.15, **_cifar, **CIFAR100_NORM
        ),
        "qkformer_2_256_dvs128.dvs128_gesture": dict(
            num_classes=11,
            input_size=(2, 128, 128),
            pool_size=(8, 8),
            top1=98.6,
            mean=(0.0, 0.0),
            std=(1.0, 1.0),
            crop_pct=1.0,
            notes=_NOT_RELEASED,
        ),
    },
)

FAMILY = ModelFamily(
    model_cls=QKFormer,
    default_cfgs=default_cfgs,
    authors_keys=_rename_authors_keys,
    citation="""@inproceedings{zhou2024qkformer,
  title     = {{QKFormer}: Hierarchical Spiking Transformer using {Q-K} Attention},
  author    = {Zhou, Chenlin and Zhang, Han and Zhou, Zhaokun and Yu, Liutao and Huang, Liwei
               and Fan, Xiaopeng and Yuan, Li and Ma, Zhengyu and Zhou, Huihui and
               Tian, Yonghong},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2024}
}""",
    # the authors' classes (shared/reference/families/README.md; DVS: dvs128-gesture/model.py's
    # QKFormer(), counted from its layers)
    reference_counts=(
        ReferenceCount("qkformer_10_384", 16_473_688),
        ReferenceCount("qkformer_10_512", 29_079_336),
        ReferenceCount("qkformer_10_768", 64_962_760),
        ReferenceCount("qkformer_4_384_cifar", 6_706_234),
        ReferenceCount("qkformer_2_256_dvs128", 1_999_371),
    ),
    tiny=TinyConfig(
        "qkformer_4_384_cifar",
        dict(embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0, layout="cifar"),
        shallow=None,  # three attention blocks at least: one per stage
    ),
)


@register_model
def qkformer_10_384(pretrained: bool = False, **kwargs) -> QKFormer:
    """QKFormer HST-10-384, ImageNet-1k (16.5M parameters)."""
    args = dict(embed_dim=384, depth=10, num_heads=6)
    return FAMILY.create("qkformer_10_384", pretrained, **dict(args, **kwargs))


@register_model
def qkformer_10_512(pretrained: bool = False, **kwargs) -> QKFormer:
    """QKFormer HST-10-512, ImageNet-1k (29.1M parameters)."""
    args = dict(embed_dim=512, depth=10, num_heads=8)
    return FAMILY.create("qkformer_10_512", pretrained, **dict(args, **kwargs))


@register_model
def qkformer_10_768(pretrained: bool = False, **kwargs) -> QKFormer:
    """QKFormer HST-10-768, ImageNet-1k (65.0M parameters)."""
    args = dict(embed_dim=768, depth=10, num_heads=12)
    return FAMILY.create("qkformer_10_768", pretrained, **dict(args, **kwargs))


@register_model
def qkformer_4_384_cifar(pretrained: bool = False, **kwargs) -> QKFormer:
    """QKFormer HST-4-384 for 32x32 CIFAR images (6.7M parameters with 10 classes)."""
    args = dict(img_size=32, embed_dim=384, depth=4, num_heads=8, layout="cifar")
    return FAMILY.create("qkformer_4_384_cifar", pretrained, **dict(args, **kwargs))


@register_model
def qkformer_2_256_dvs128(pretrained: bool = False, **kwargs) -> QKFormer:
    """QKFormer HST-2-256 for DVS128 Gesture event frames ``[B, T, 2, 128, 128]`` (T=16)."""
    args = dict(img_size=128, embed_dim=256, depth=2, num_heads=16, layout="dvs")
    args.update(time_steps=16)
    return FAMILY.create("qkformer_2_256_dvs128", pretrained, **dict(args, **kwargs))
