"""SpikingResformer.

Shi et al., "SpikingResformer: Bridging ResNet and Vision Transformer in Spiking Neural
Networks", CVPR 2024 (arXiv:2403.14302). The computation is the authors'
(xyshi2000/SpikingResformer): a convolutional stem, stages of dual spike self-attention (DSSA)
and group-wise spiking FFN (GWSFFN) on membrane potentials with spiking downsampling between
them, and a linear head applied at every step. Weights converted from the authors' checkpoints
reproduce their outputs exactly (see ``tests/models``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from timm.models import register_model
from torch import Tensor, nn

from spikezoo._checks import positive_int
from spikezoo.layers import DSSA, GWSFFN, ConvBN, Downsample, MaxPool2d, NeuronFactory, PerStep
from spikezoo.models._base import SpikingVisionModel, drop_path_rates
from spikezoo.models._checkpoint import RenameRule, rename_key
from spikezoo.models._family import ModelFamily, ReferenceCount, TinyConfig
from spikezoo.models._pretrained import CIFAR100_NORM, IMAGENET_CFG, spikezoo_default_cfgs
from spikezoo.weights import AuthorsFile

__all__ = ["FAMILY", "SpikingResformer"]

STEMS = ("imagenet", "conv3x3")


class SpikingResformer(SpikingVisionModel):
    """SpikingResformer: a convolutional stem, then stages of (DSSA, GWSFFN) pairs.

    Args (besides those of every family, see :class:`~spikezoo.models.SpikingVisionModel`;
    ``neuron="plif"`` has the arctan surrogate, alpha 2, ``drop_path_rate`` increases linearly
    over the residual units, and DSSA takes its number of patches from the input, so other
    sizes than ``img_size``, e.g. 288, work at run time):
        depths: (DSSA, GWSFFN) pairs per stage.
        embed_dims: width of each stage.
        num_heads: DSSA heads per stage.
        patch_sizes: DSSA patch size per stage.
        stem: ``"imagenet"`` (7x7 stride-2 conv, BN, 3x3 stride-2 max-pool) or ``"conv3x3"``
            (3x3 conv and BN, for 32x32 and event input).
        group_size: channels per group of the GWSFFN 3x3 convolution.
    """

    feature_units = "stages"
    paper = "spiking_resformer"
    head_neuron = False
    head_bias = False
    init_layer_types = (nn.Conv2d, nn.Linear)
    static_stem = ("stem", "stem_pool")

    def build_features(
        self,
        neuron: NeuronFactory,
        drop_path_rate: float,
        depths: Sequence[int] = (1, 2, 3),
        embed_dims: Sequence[int] = (64, 192, 384),
        num_heads: Sequence[int] = (1, 3, 6),
        patch_sizes: Sequence[int] = (4, 2, 1),
        stem: str = "imagenet",
        group_size: int = 64,
    ) -> None:
        """The stem and the stages."""
        lengths = {len(depths), len(embed_dims), len(num_heads), len(patch_sizes)}
        if len(lengths) != 1:
            raise ValueError(
                "depths, embed_dims, num_heads and patch_sizes need one entry per stage, got "
                f"{len(depths)}, {len(embed_dims)}, {len(num_heads)} and {len(patch_sizes)}"
            )
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {list(STEMS)}, got {stem!r}")
        for name, values, minimum in (
            ("depths", depths, 0),
            ("embed_dims", embed_dims, 1),
            ("num_heads", num_heads, 1),
            ("patch_sizes", patch_sizes, 1),
        ):
            for i, value in enumerate(values):
                positive_int(f"{name}[{i}]", value, minimum)
        rates = iter(drop_path_rates(drop_path_rate, sum(depths)))
        self.num_features = self.head_hidden_size = embed_dims[-1]

        if stem == "imagenet":
            self.stem = ConvBN(self.in_chans, embed_dims[0], 7, stride=2)
            self.stem_pool = PerStep(MaxPool2d(3, 2, 1))
            stem_reduction = 4
        else:
            self.stem = ConvBN(self.in_chans, embed_dims[0], 3)
            self.stem_pool = nn.Identity()
            stem_reduction = 1
        reductions = [stem_reduction * 2**i for i in range(len(depths))]
        self.size_multiple = math.lcm(
            *(r * p for r, p in zip(reductions, patch_sizes, strict=True))
        )

        stages = []
        for i, (depth, dim, heads, patch) in enumerate(
            zip(depths, embed_dims, num_heads, patch_sizes, strict=True)
        ):
            units = [Downsample(embed_dims[i - 1], dim, neuron=neuron)] if i > 0 else []
            for _ in range(depth):
                rate = next(rates)
                units.append(DSSA(dim, heads, patch, neuron=neuron, drop_path=rate))
                units.append(GWSFFN(dim, group_size=group_size, neuron=neuron, drop_path=rate))
            stages.append(nn.Sequential(*units))
        self.stages = nn.Sequential(*stages)
        self.feature_info = [
            dict(num_chs=dim, reduction=r, module=f"stages.{i}")
            for i, (dim, r) in enumerate(zip(embed_dims, reductions, strict=True))
        ]

    def forward_stem(self, x: Tensor) -> Tensor:
        """``[T, B, in_chans, H, W]`` -> the convolutional stem's output map."""
        return self.stem_pool(self.stem(x))


# --- the authors' checkpoints --------------------------------------------------------------

_AUTHORS_TOP_LEVEL: list[RenameRule] = [
    (r"^prologue\.0\.", "stem.conv."),
    (r"^prologue\.1\.bn\.", "stem.bn."),
    (r"^classifier\.", "head."),
]

#: The authors' names inside each residual unit ``layers.<i>.<j>``, by spikezoo module type.
_AUTHORS_UNIT: dict[type, list[RenameRule]] = {
    DSSA: [
        (r"^activation_in\.", "in_lif."),
        (r"^W\.", "patch_proj.conv."),
        (r"^norm\.bn\.", "patch_proj.bn."),
        (r"^activation_attn\.", "attn_lif."),
        (r"^activation_out\.", "proj.neuron."),
        (r"^Wproj\.", "proj.conv."),
        (r"^norm_proj\.bn\.", "proj.bn."),
    ],
    GWSFFN: [
        (r"^(up|down)\.0\.", r"\1.neuron."),
        (r"^(up|down)\.1\.", r"\1.conv."),
        (r"^(up|down)\.2\.bn\.", r"\1.bn."),
        (r"^conv\.(\d+)\.0\.", r"convs.\1.neuron."),
        (r"^conv\.(\d+)\.1\.", r"convs.\1.conv."),
        (r"^conv\.(\d+)\.2\.bn\.", r"convs.\1.bn."),
    ],
    Downsample: [(r"^activation\.", "neuron."), (r"^norm\.bn\.", "bn.")],
}


def _rename_authors_keys(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """The authors' names, and inside each residual unit those of its spikezoo module type."""
    mapped = {}
    for key, value in state_dict.items():
        key = rename_key(key, _AUTHORS_TOP_LEVEL)
        unit_key = re.match(r"^layers\.(\d+)\.(\d+)\.(.+)$", key)
        if unit_key:
            stage, index, rest = unit_key.groups()
            try:
                unit = model.get_submodule(f"stages.{stage}.{index}")
            except AttributeError:
                unit = None
            key = f"stages.{stage}.{index}.{rename_key(rest, _AUTHORS_UNIT.get(type(unit), []))}"
        mapped[key] = value
    return mapped


# --- configurations ------------------------------------------------------------------------

_CIFAR10 = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010))


_DEFAULTS = dict(
    IMAGENET_CFG,
    first_conv="stem.conv",
    license="mit",
    paper_name=(
        "SpikingResformer: Bridging ResNet and Vision Transformer in Spiking Neural Networks"
    ),
    paper_ids="arXiv:2403.14302",
    origin_url="https://github.com/xyshi2000/SpikingResformer",
)


_cifar = dict(input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0)

# The authors' ImageNet checkpoints ({"model": ...}) sit in one Google Drive folder, to be
# downloaded by hand.
_AUTHORS_FOLDER = AuthorsFile(
    page="https://drive.google.com/drive/folders/1sAFHKF9QZC2P0aSoC9bdLqgW8TfLjFSC"
)

default_cfgs = spikezoo_default_cfgs(
    _DEFAULTS,
    {
        "spikingresformer_ti.in1k": dict(top1=74.34, authors_file=_AUTHORS_FOLDER),
        "spikingresformer_s.in1k": dict(authors_file=_AUTHORS_FOLDER),
        "spikingresformer_m.in1k": dict(top1=77.24, authors_file=_AUTHORS_FOLDER),
        "spikingresformer_l.in1k": dict(
            test_input_size=(3, 288, 288), top1=79.40, authors_file=_AUTHORS_FOLDER
        ),
        "spikingresformer_cifar.cifar10": dict(num_classes=10, **_cifar, **_CIFAR10),
        "spikingresformer_cifar.cifar100": dict(num_classes=100, **_cifar, **CIFAR100_NORM),
        "spikingresformer_dvsg.dvs128_gesture": dict(
            num_classes=11,
            input_size=(3, 64, 64),
            pool_size=(16, 16),
            crop_pct=1.0,
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
        ),
    },
)

FAMILY = ModelFamily(
    model_cls=SpikingResformer,
    default_cfgs=default_cfgs,
    authors_keys=_rename_authors_keys,
    citation="""@inproceedings{shi2024spikingresformer,
  title     = {SpikingResformer: Bridging ResNet and Vision Transformer in Spiking Neural
               Networks},
  author    = {Shi, Xinyu and Hao, Zecheng and Yu, Zhaofei},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2024}
}""",
    # the authors' models (shared/reference/ARCHITECTURE.md)
    reference_counts=(
        ReferenceCount("spikingresformer_ti", 11_180_992),
        ReferenceCount("spikingresformer_s", 17_813_824),
        ReferenceCount("spikingresformer_m", 35_601_472),
        ReferenceCount("spikingresformer_l", 60_375_680),
        ReferenceCount("spikingresformer_cifar", 10_793_152),
        ReferenceCount("spikingresformer_dvsg", 2_709_830),
    ),
    tiny=TinyConfig(
        "spikingresformer_ti",
        dict(
            embed_dims=(16, 32),
            num_heads=(1, 2),
            depths=(1, 1),
            patch_sizes=(2, 1),
            group_size=16,
            stem="conv3x3",
        ),
        shallow=dict(depths=(1, 0)),
    ),
)

_IMAGENET_STAGES = dict(depths=(1, 2, 3), patch_sizes=(4, 2, 1))


@register_model
def spikingresformer_ti(pretrained: bool = False, **kwargs) -> SpikingResformer:
    """SpikingResformer-Ti, ImageNet-1k (11.2M parameters)."""
    args = dict(_IMAGENET_STAGES, embed_dims=(64, 192, 384), num_heads=(1, 3, 6))
    return FAMILY.create("spikingresformer_ti", pretrained, **dict(args, **kwargs))


@register_model
def spikingresformer_s(pretrained: bool = False, **kwargs) -> SpikingResformer:
    """SpikingResformer-S, ImageNet-1k (17.8M parameters)."""
    args = dict(_IMAGENET_STAGES, embed_dims=(64, 256, 512), num_heads=(1, 4, 8))
    return FAMILY.create("spikingresformer_s", pretrained, **dict(args, **kwargs))


@register_model
def spikingresformer_m(pretrained: bool = False, **kwargs) -> SpikingResformer:
    """SpikingResformer-M, ImageNet-1k (35.6M parameters)."""
    args = dict(_IMAGENET_STAGES, embed_dims=(64, 384, 768), num_heads=(1, 6, 12))
    return FAMILY.create("spikingresformer_m", pretrained, **dict(args, **kwargs))


@register_model
def spikingresformer_l(pretrained: bool = False, **kwargs) -> SpikingResformer:
    """SpikingResformer-L, ImageNet-1k (60.4M parameters)."""
    args = dict(_IMAGENET_STAGES, embed_dims=(128, 512, 1024), num_heads=(2, 8, 16))
    return FAMILY.create("spikingresformer_l", pretrained, **dict(args, **kwargs))


@register_model
def spikingresformer_cifar(pretrained: bool = False, **kwargs) -> SpikingResformer:
    """SpikingResformer-Ti* for 32x32 CIFAR images (3x3 stem)."""
    args = dict(_IMAGENET_STAGES, embed_dims=(64, 192, 384), num_heads=(1, 3, 6))
    args.update(img_size=32, stem="conv3x3")  # num_classes comes from the tag
    return FAMILY.create("spikingresformer_cifar", pretrained, **dict(args, **kwargs))


@register_model
def spikingresformer_dvsg(pretrained: bool = False, **kwargs) -> SpikingResformer:
    """SpikingResformer-XTi for DVS128 Gesture frames ``[B, T, 3, 64, 64]`` (PLIF neurons)."""
    args = dict(_IMAGENET_STAGES, embed_dims=(32, 96, 192), num_heads=(1, 3, 6))
    args.update(img_size=64, stem="conv3x3", group_size=32, neuron="plif")
    args.update(time_steps=16)
    return FAMILY.create("spikingresformer_dvsg", pretrained, **dict(args, **kwargs))
