"""timm's pretrained config, plus the fields a spiking model's weights come with."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import (
    PretrainedCfg,
    build_model_with_cfg,
    generate_default_cfgs,
    resolve_pretrained_cfg,
)
from torch import Tensor, nn

__all__ = [
    "CIFAR100_NORM",
    "IMAGENET_CFG",
    "SpikingPretrainedCfg",
    "build_spiking_model",
    "spikezoo_default_cfgs",
]

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
)

#: CIFAR-100 normalisation, the same in both authors' code.
CIFAR100_NORM = dict(mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761))


@dataclass
class SpikingPretrainedCfg(PretrainedCfg):
    """A :class:`timm.models.PretrainedCfg` with the paper's accuracy.

    The time steps T are a model argument (``model.time_steps``), not part of the cfg: the entry
    point's default is the T the weights were trained with, and an exported ``config.json``
    records it under ``model_args``.
    """

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


#: Arguments of ``build_model_with_cfg`` that do not describe the network's weights.
_NOT_ARCHITECTURE = (
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "cache_dir",
    "features_only",
    "out_indices",
    "feature_cls",
    "feature_cfg",
    "num_classes",
    "in_chans",
    "device",
    "dtype",
)


def build_spiking_model(
    model_cls: type[nn.Module],
    variant: str,
    pretrained: bool,
    checkpoint_filter_fn: Callable[[Mapping, nn.Module], dict[str, Tensor]],
    **kwargs,
) -> nn.Module:
    """timm's ``build_model_with_cfg``, with spikezoo's weight sources and safe file reading.

    The one builder of every family's entry points (through
    :meth:`~spikezoo.models.ModelFamily.create`). Checkpoints go through
    ``checkpoint_filter_fn``. A ``features_only`` model returns every feature unit's map unless
    ``out_indices`` says otherwise.

    A ``pretrained_cfg`` given as a dict (``config.json`` of a ``local-dir:`` or ``hf-hub:``
    export) becomes a :class:`SpikingPretrainedCfg`. With ``pretrained=True`` the weights are
    located and read by :func:`spikezoo.hub.pretrained_state_dict` (never unpickled) and then
    go through timm's usual filtering and head / input-channel adaptation.
    """
    if isinstance(kwargs.get("pretrained_cfg"), dict):
        kwargs["pretrained_cfg"] = SpikingPretrainedCfg(**kwargs["pretrained_cfg"])
    cfg = None
    if pretrained:
        # imported here: spikezoo.hub builds models from the families that import this module
        from spikezoo.hub import pretrained_state_dict

        cfg = resolve_pretrained_cfg(
            variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay")
        )
        architecture_args = {k: v for k, v in kwargs.items() if k not in _NOT_ARCHITECTURE}
        state_dict = pretrained_state_dict(cfg, architecture_args)
        # source="" makes timm take the state dict instead of fetching hf-hub itself
        overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
        kwargs["pretrained_cfg_overlay"] = dict(overlay, state_dict=state_dict, source="")
    model = build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=None),
        **kwargs,
    )
    if cfg is not None:
        for module in (model, getattr(model, "model", None)):
            if isinstance(getattr(module, "pretrained_cfg", None), dict):
                module.pretrained_cfg.pop("state_dict", None)
                module.pretrained_cfg["source"] = cfg.source
    return model
