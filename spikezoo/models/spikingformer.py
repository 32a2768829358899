"""Spikingformer.

Zhou et al., "Spikingformer: Spike-driven Residual Learning for Transformer-based Spiking
Neural Network", 2023 (arXiv:2304.11954). Spikformer's network (:mod:`spikezoo.models.
spikformer`) with pre-activation: every neuron fires before the convolution it feeds, so the
residual stream carries membrane potentials and every convolution reads spikes. The spiking
tokenizer is the SPS without a residual position embedding (``rpe="plain"``). The computation
is the authors' (zhouchenlin2096/Spikingformer) to the last spike (see ``tests/models``).

The neurons of the event-data files (CIFAR10-DVS, DVS128 Gesture) have ``tau=1.5``; their entry
points build them
(:data:`~spikezoo.layers.SPIKINGFORMER_DVS_NEURON`).
"""

from __future__ import annotations

from timm.models import register_model

from spikezoo.layers import SPIKINGFORMER_DVS_NEURON
from spikezoo.models._checkpoint import RenameRule, as_conv1x1
from spikezoo.models._family import ModelFamily, ReferenceCount, TinyConfig, rename_passes
from spikezoo.models._pretrained import IMAGENET_CFG, spikezoo_default_cfgs
from spikezoo.models.spikformer import BLOCK_KEYS, CIFAR10_NORM, DVS_CFG, Spikformer
from spikezoo.weights import AuthorsFile

__all__ = ["FAMILY", "Spikingformer"]


class Spikingformer(Spikformer):
    """Spikingformer: Spikformer with pre-activation blocks and a plain spiking tokenizer.

    Arguments as :class:`~spikezoo.models.spikformer.Spikformer`'s.
    """

    paper = "spikingformer"
    pre_activation = True
    rpe = "plain"


# --- the authors' checkpoints --------------------------------------------------------------

_AUTHORS_KEYS: list[RenameRule] = [
    # the ImageNet and DVS files: proj_conv, proj1_conv, ..., proj4_conv (the fifth stage)
    (r"^patch_embed\.proj_(conv|bn)\.", r"patch_embed.proj.0.\1."),
    (r"^patch_embed\.proj([1-3])_(conv|bn)\.", r"patch_embed.proj.\1.\2."),
    (r"^patch_embed\.proj4_(conv|bn)\.", r"patch_embed.rpe.\1."),
    # the CIFAR files: block0_conv, ..., block4_conv
    (r"^patch_embed\.block([0-3])_(conv|bn)\.", r"patch_embed.proj.\1.\2."),
    (r"^patch_embed\.block4_(conv|bn)\.", r"patch_embed.rpe.\1."),
    *BLOCK_KEYS,
]


# --- configurations ------------------------------------------------------------------------

_BAIDU_PASSWORD = "abcd"  # the repository's README: "All download passwords: abcd"
_NOT_RELEASED = ("top1 is the paper's; the authors released no weights of this model.",)
_cifar = dict(input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0)

_DEFAULTS = dict(
    IMAGENET_CFG,
    first_conv="patch_embed.proj.0.conv",
    license="apache-2.0",
    paper_name="Spikingformer: Spike-driven Residual Learning for Transformer-based Spiking "
    "Neural Network",
    paper_ids="arXiv:2304.11954",
    origin_url="https://github.com/zhouchenlin2096/Spikingformer",
)

# The released files are timm train.py checkpoints ({"state_dict": ..., "args": ...}) on
# Baidu Netdisk, which no script can download: pretrained=True names the page and the
# `spikezoo convert` command.
default_cfgs = spikezoo_default_cfgs(
    _DEFAULTS,
    {
        "spikingformer_8_384.in1k": dict(top1=72.45, notes=_NOT_RELEASED),
        "spikingformer_8_512.in1k": dict(top1=74.79, notes=_NOT_RELEASED),
        "spikingformer_8_768.in1k": dict(
            top1=75.85,
            authors_file=AuthorsFile(
                page="https://pan.baidu.com/s/1LsECpFOxh30O3vHWow8OGQ", password=_BAIDU_PASSWORD
            ),
        ),
        "spikingformer_4_384_cifar.cifar10": dict(
            num_classes=10,
            top1=95.81,
            # the 400-epoch model of the README (cifar10.yml trains 400 epochs)
            authors_file=AuthorsFile(
                page="https://pan.baidu.com/s/1mjpD2gtz5ZX0M8N3jobjzA", password=_BAIDU_PASSWORD
            ),
            **_cifar,
            **CIFAR10_NORM,
        ),
        "spikingformer_4_384_cifar.cifar100": dict(
            num_classes=100,
            top1=79.21,
            notes=(
                *_NOT_RELEASED,
                "The authors' CIFAR-100 config has num_heads=8 and the CIFAR-10 normalisation.",
            ),
            **_cifar,
            **CIFAR10_NORM,
        ),
        "spikingformer_2_256_cifar10dvs.cifar10_dvs": dict(
            num_classes=10, top1=81.3, notes=_NOT_RELEASED, **DVS_CFG
        ),
        "spikingformer_2_256_dvs128.dvs128_gesture": dict(
            num_classes=11, top1=98.3, notes=_NOT_RELEASED, **DVS_CFG
        ),
    },
)

FAMILY = ModelFamily(
    model_cls=Spikingformer,
    default_cfgs=default_cfgs,
    authors_keys=lambda state_dict, model: as_conv1x1(
        rename_passes(_AUTHORS_KEYS)(state_dict, model), model
    ),
    citation="""@article{zhou2023spikingformer,
  title   = {Spikingformer: Spike-driven Residual Learning for Transformer-based Spiking Neural
             Network},
  author  = {Zhou, Chenlin and Yu, Liutao and Zhou, Zhaokun and Ma, Zhengyu and Zhang, Han and
             Zhou, Huihui and Tian, Yonghong},
  journal = {arXiv preprint arXiv:2304.11954},
  year    = {2023}
}""",
    # the authors' classes (shared/reference/families/README.md); ``unused``: the LayerNorms
    # norm1 and norm2 of every block, built but never applied
    reference_counts=(
        ReferenceCount("spikingformer_8_384", 16_828_312, unused=8 * 4 * 384),
        ReferenceCount("spikingformer_8_512", 29_705_768, unused=8 * 4 * 512),
        ReferenceCount("spikingformer_8_768", 66_363_208, unused=8 * 4 * 768),
        ReferenceCount("spikingformer_4_384_cifar", 9_326_266, unused=4 * 4 * 384),
        ReferenceCount("spikingformer_2_256_cifar10dvs", 2_568_714, unused=2 * 4 * 256),
        # dvs128-gesture/model.py: the CIFAR10-DVS network with 11 classes
        ReferenceCount("spikingformer_2_256_dvs128", 2_568_971, unused=2 * 4 * 256),
    ),
    tiny=TinyConfig(
        "spikingformer_8_384",
        dict(embed_dim=32, depth=2, num_heads=4, pooling_stat="0011"),
        shallow=dict(depth=1),
    ),
)


@register_model
def spikingformer_8_384(pretrained: bool = False, **kwargs) -> Spikingformer:
    """Spikingformer 8-384, ImageNet-1k (16.8M parameters), T=4."""
    args = dict(embed_dim=384, depth=8, num_heads=8)
    return FAMILY.create("spikingformer_8_384", pretrained, **dict(args, **kwargs))


@register_model
def spikingformer_8_512(pretrained: bool = False, **kwargs) -> Spikingformer:
    """Spikingformer 8-512, ImageNet-1k (29.7M parameters), T=4."""
    args = dict(embed_dim=512, depth=8, num_heads=8)
    return FAMILY.create("spikingformer_8_512", pretrained, **dict(args, **kwargs))


@register_model
def spikingformer_8_768(pretrained: bool = False, **kwargs) -> Spikingformer:
    """Spikingformer 8-768, ImageNet-1k (66.3M parameters), T=4."""
    args = dict(embed_dim=768, depth=8, num_heads=8)
    return FAMILY.create("spikingformer_8_768", pretrained, **dict(args, **kwargs))


@register_model
def spikingformer_4_384_cifar(pretrained: bool = False, **kwargs) -> Spikingformer:
    """Spikingformer 4-384 for 32x32 CIFAR images (patch 4), T=4."""
    args = dict(img_size=32, embed_dim=384, depth=4, num_heads=12, pooling_stat="0011")
    args.update(kv_first=False)
    return FAMILY.create("spikingformer_4_384_cifar", pretrained, **dict(args, **kwargs))


@register_model
def spikingformer_2_256_cifar10dvs(pretrained: bool = False, **kwargs) -> Spikingformer:
    """Spikingformer 2-256 for CIFAR10-DVS event frames ``[B, T, 2, 128, 128]`` (T=16)."""
    args = dict(img_size=128, in_chans=2, embed_dim=256, depth=2, num_heads=16)
    args.update(kv_first=False, time_steps=16, neuron=SPIKINGFORMER_DVS_NEURON)
    return FAMILY.create("spikingformer_2_256_cifar10dvs", pretrained, **dict(args, **kwargs))


@register_model
def spikingformer_2_256_dvs128(pretrained: bool = False, **kwargs) -> Spikingformer:
    """Spikingformer 2-256 for DVS128 Gesture event frames ``[B, T, 2, 128, 128]`` (T=16)."""
    args = dict(img_size=128, in_chans=2, embed_dim=256, depth=2, num_heads=16)
    args.update(kv_first=False, time_steps=16, neuron=SPIKINGFORMER_DVS_NEURON)
    return FAMILY.create("spikingformer_2_256_dvs128", pretrained, **dict(args, **kwargs))
