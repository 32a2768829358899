"""timm's pretrained config, plus the fields a spiking model's weights come with."""

from __future__ import annotations

from dataclasses import dataclass

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import PretrainedCfg, generate_default_cfgs

__all__ = ["CIFAR100_NORM", "IMAGENET_CFG", "SpikingPretrainedCfg", "spikezoo_default_cfgs"]

#: ImageNet-1k evaluation as both authors' scripts do it (timm loader, bicubic, crop 0.95), T=4.
IMAGENET_CFG = dict(
    num_classes=1000,
    input_size=(3, 224, 224),
    pool_size=(14, 14),
    crop_pct=0.95,
    interpolation="bicubic",
    mean=IMAGENET_DEFAULT_MEAN,
    std=IMAGENET_DEFAULT_STD,
    classifier="head",
    time_steps=4,
)

#: CIFAR-100 normalisation, the same in both authors' code.
CIFAR100_NORM = dict(mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761))


@dataclass
class SpikingPretrainedCfg(PretrainedCfg):
    """A :class:`timm.models.PretrainedCfg` with the time steps and the paper's accuracy."""

    #: time steps T the weights were trained and evaluated with.
    time_steps: int = 4
    #: top-1 accuracy (%) the paper reports for these weights with ``time_steps``, at
    #: ``test_input_size`` when set, else ``input_size``; ``None`` where the paper gives none.
    top1: float | None = None


def spikezoo_default_cfgs(defaults: dict, tags: dict[str, dict]) -> dict:
    """timm default cfgs for ``"model.tag"`` names: ``defaults`` updated by each tag's fields.

    The weights of ``model.tag`` live in the Hugging Face Hub repository ``spikezoo/model.tag``.
    """
    return generate_default_cfgs(
        {
            tag: SpikingPretrainedCfg(**{**defaults, "hf_hub_id": f"spikezoo/{tag}", **fields})
            for tag, fields in tags.items()
        }
    )
