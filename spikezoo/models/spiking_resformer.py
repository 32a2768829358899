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
from collections.abc import Mapping, Sequence
from functools import partial

import torch
from timm.layers import to_2tuple
from timm.models import register_model
from torch import Tensor, nn

from spikezoo._checks import positive_int
from spikezoo.layers import DSSA, GWSFFN, ConvBN, Downsample, NeuronFactory, PerStep
from spikezoo.models._base import (
    SpikingVisionModel,
    drop_path_rates,
    neuron_factory,
    trunc_normal_init,
)
from spikezoo.models._checkpoint import RenameRule, filter_checkpoint, rename_key, unwrap_state_dict
from spikezoo.models._pretrained import (
    CIFAR100_NORM,
    IMAGENET_CFG,
    build_spiking_model,
    spikezoo_default_cfgs,
)
from spikezoo.weights import AuthorsFile

__all__ = ["SpikingResformer", "checkpoint_filter_fn", "remap_state_dict"]

STEMS = ("imagenet", "conv3x3")


class SpikingResformer(SpikingVisionModel):
    """SpikingResformer.

    Args:
        img_size: nominal input size; a multiple of :attr:`size_multiple`. DSSA takes its
            number of patches from the input, so other sizes (e.g. 288) work at run time.
        in_chans: input channels.
        num_classes: classes of the linear head (0: no head).
        depths: (DSSA, GWSFFN) pairs per stage.
        embed_dims: width of each stage.
        num_heads: DSSA heads per stage.
        patch_sizes: DSSA patch size per stage.
        stem: ``"imagenet"`` (7x7 stride-2 conv, BN, 3x3 stride-2 max-pool) or ``"conv3x3"``
            (3x3 conv and BN, for 32x32 and event input).
        group_size: channels per group of the GWSFFN 3x3 convolution.
        neuron: ``"lif"``, ``"plif"`` (arctan surrogate, alpha 2) or a neuron factory.
        time_steps: T for static images (event input brings its own T).
        drop_path_rate: stochastic depth, increasing linearly over the residual units.
        global_pool: ``"avg"`` or ``""`` (per-token logits).
        per_step_logits: return ``[T, B, K]`` instead of the time average.
        feature_time_reduction: default ``time_reduction`` of ``forward_intermediates``.
        device: device of the parameters and buffers (timm's factory argument).
        dtype: floating-point dtype of the parameters and buffers (timm's factory argument).
    """

    feature_units = "stages"
    head_bias = False

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (1, 2, 3),
        embed_dims: Sequence[int] = (64, 192, 384),
        num_heads: Sequence[int] = (1, 3, 6),
        patch_sizes: Sequence[int] = (4, 2, 1),
        stem: str = "imagenet",
        group_size: int = 64,
        neuron: str | NeuronFactory = "lif",
        time_steps: int = 4,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        per_step_logits: bool = False,
        feature_time_reduction: str = "mean",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_chans, num_classes, time_steps, global_pool, per_step_logits, feature_time_reduction
        )
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
        make_neuron = neuron_factory(neuron, surrogate="atan")
        self.num_features = self.head_hidden_size = embed_dims[-1]

        if stem == "imagenet":
            self.stem = ConvBN(in_chans, embed_dims[0], 7, stride=2)
            self.stem_pool = PerStep(nn.MaxPool2d(3, 2, 1))
            stem_reduction = 4
        else:
            self.stem = ConvBN(in_chans, embed_dims[0], 3)
            self.stem_pool = nn.Identity()
            stem_reduction = 1
        reductions = [stem_reduction * 2**i for i in range(len(depths))]
        self._size_multiple = math.lcm(
            *(r * p for r, p in zip(reductions, patch_sizes, strict=True))
        )
        self.check_image_size(*to_2tuple(img_size))

        stages = []
        for i, (depth, dim, heads, patch) in enumerate(
            zip(depths, embed_dims, num_heads, patch_sizes, strict=True)
        ):
            units = [Downsample(embed_dims[i - 1], dim, neuron=make_neuron)] if i > 0 else []
            for _ in range(depth):
                rate = next(rates)
                units.append(DSSA(dim, heads, patch, neuron=make_neuron, drop_path=rate))
                units.append(GWSFFN(dim, group_size=group_size, neuron=make_neuron, drop_path=rate))
            stages.append(nn.Sequential(*units))
        self.stages = nn.Sequential(*stages)
        self.feature_info = [
            dict(num_chs=dim, reduction=r, module=f"stages.{i}")
            for i, (dim, r) in enumerate(zip(embed_dims, reductions, strict=True))
        ]
        self.head_lif = nn.Identity()
        self.head = self._make_head(self.num_features, num_classes)
        # the authors' init: conv and linear weights truncated-normal(0.02), zero biases
        self.apply(partial(trunc_normal_init, layer_types=(nn.Conv2d, nn.Linear)))
        self.to(device=device, dtype=dtype)

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this number."""
        return self._size_multiple

    def forward_stem(self, x: Tensor) -> Tensor:
        """``[T, B, in_chans, H, W]`` -> the convolutional stem's output map."""
        return self.stem_pool(self.stem(x))

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups (stem, blocks) for layer-wise learning-rate decay."""
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)",
        )


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


def remap_state_dict(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename the authors' SpikingResformer keys to spikezoo's (any subset); no checks."""
    mapped = {}
    for key, value in unwrap_state_dict(state_dict).items():
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


def checkpoint_filter_fn(state_dict: Mapping, model: SpikingResformer) -> dict[str, Tensor]:
    """Map the authors' SpikingResformer state dict (or ``{"model": ...}``) to spikezoo's.

    spikezoo's own state dicts pass through. Raises
    :class:`~spikezoo.models.CheckpointMismatchError` if the result does not fit ``model``.
    """
    return filter_checkpoint(state_dict, model, remap_state_dict, exempt=("head.", "stem.conv."))


def _create(variant: str, pretrained: bool = False, **kwargs) -> SpikingResformer:
    return build_spiking_model(
        SpikingResformer, variant, pretrained, num_feature_units=len(kwargs["depths"]), **kwargs
    )


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

_IMAGENET_STAGES = dict(depths=(1, 2, 3), patch_sizes=(4, 2, 1))


@register_model
def spikingresformer_ti(pretrained: bool = False, **kwargs) -> SpikingResformer:
    """SpikingResformer-Ti, ImageNet-1k (11.2M parameters)."""
    args = dict(_IMAGENET_STAGES, embed_dims=(64, 192, 384), num_heads=(1, 3, 6))
    return _create("spikingresformer_ti", pretrained, **dict(args, **kwargs))


@register_model
def spikingresformer_s(pretrained: bool = False, **kwargs) -> SpikingResformer:
    """SpikingResformer-S, ImageNet-1k (17.8M parameters)."""
    args = dict(_IMAGENET_STAGES, embed_dims=(64, 256, 512), num_heads=(1, 4, 8))
    return _create("spikingresformer_s", pretrained, **dict(args, **kwargs))


@register_model
def spikingresformer_m(pretrained: bool = False, **kwargs) -> SpikingResformer:
    """SpikingResformer-M, ImageNet-1k (35.6M parameters)."""
    args = dict(_IMAGENET_STAGES, embed_dims=(64, 384, 768), num_heads=(1, 6, 12))
    return _create("spikingresformer_m", pretrained, **dict(args, **kwargs))


@register_model
def spikingresformer_l(pretrained: bool = False, **kwargs) -> SpikingResformer:
    """SpikingResformer-L, ImageNet-1k (60.4M parameters)."""
    args = dict(_IMAGENET_STAGES, embed_dims=(128, 512, 1024), num_heads=(2, 8, 16))
    return _create("spikingresformer_l", pretrained, **dict(args, **kwargs))


@register_model
def spikingresformer_cifar(pretrained: bool = False, **kwargs) -> SpikingResformer:
    """SpikingResformer-Ti* for 32x32 CIFAR images (3x3 stem)."""
    args = dict(_IMAGENET_STAGES, embed_dims=(64, 192, 384), num_heads=(1, 3, 6))
    args.update(img_size=32, stem="conv3x3")  # num_classes comes from the tag
    return _create("spikingresformer_cifar", pretrained, **dict(args, **kwargs))


@register_model
def spikingresformer_dvsg(pretrained: bool = False, **kwargs) -> SpikingResformer:
    """SpikingResformer-XTi for DVS128 Gesture frames ``[B, T, 3, 64, 64]`` (PLIF neurons)."""
    args = dict(_IMAGENET_STAGES, embed_dims=(32, 96, 192), num_heads=(1, 3, 6))
    args.update(img_size=64, stem="conv3x3", group_size=32, neuron="plif")
    args.update(time_steps=16)
    return _create("spikingresformer_dvsg", pretrained, **dict(args, **kwargs))
