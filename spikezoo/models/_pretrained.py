"""Building a model with timm's ``build_model_with_cfg``, its pretrained weights mapped on."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import (
    build_model_with_cfg,
    generate_default_cfgs,
    get_pretrained_cfg,
    resolve_pretrained_cfg,
)
from torch import Tensor, nn

from spikezoo.neurons import use_backend
from spikezoo.weights import SpikingPretrainedCfg, pretrained_weights

__all__ = [
    "CIFAR100_NORM",
    "IMAGENET_CFG",
    "build_spiking_model",
    "check_finite_forward",
    "spikezoo_default_cfgs",
    "weights_model_args",
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
    export) becomes a :class:`~spikezoo.weights.SpikingPretrainedCfg`. With
    ``pretrained=True`` the weights are located and read by
    :func:`spikezoo.weights.pretrained_weights` (never unpickled) and then go through timm's
    usual filtering and head / input-channel adaptation onto the one model built here. A
    freshly downloaded authors' file must also give finite outputs in one forward pass
    (:func:`check_finite_forward`) before it is kept in spikezoo's cache.
    """
    for name, value in weights_model_args(
        variant, pretrained, kwargs.get("pretrained_cfg")
    ).items():
        kwargs.setdefault(name, value)
    if isinstance(kwargs.get("pretrained_cfg"), dict):
        kwargs["pretrained_cfg"] = SpikingPretrainedCfg(**kwargs["pretrained_cfg"])
    build = dict(
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=None),
    )
    if not pretrained:
        return build_model_with_cfg(model_cls, variant, pretrained, **build, **kwargs)
    cfg = resolve_pretrained_cfg(
        variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay")
    )
    with pretrained_weights(cfg) as weights:
        # source="" makes timm take the state dict instead of fetching hf-hub itself
        overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
        overlay.update(state_dict=weights.state_dict, source="")
        model = build_model_with_cfg(
            model_cls, variant, pretrained, pretrained_cfg_overlay=overlay, **build, **kwargs
        )
        if weights.downloaded:
            check_finite_forward(model, f"{variant} with the weights of {weights.source}")
    for module in (model, getattr(model, "model", None)):
        if isinstance(getattr(module, "pretrained_cfg", None), dict):
            module.pretrained_cfg.pop("state_dict", None)
            module.pretrained_cfg["source"] = cfg.source
    return model


def weights_model_args(variant: str, pretrained: bool, pretrained_cfg: object) -> dict:
    """The architecture arguments (a cfg's ``model_args``) of the weights an entry point is
    asked for: those of the tag that ``pretrained_cfg`` names (a tag, or a cfg or a cfg's dict,
    such as a ``config.json`` export's, with their own ``model_args`` or a ``tag``), or with
    ``pretrained=True`` and no ``pretrained_cfg``, of ``variant``'s default tag; none when no
    weights are asked for.

    Weights of the same shapes can need other arguments (E-SpikeFormer's 1x4 and 1x8 spike
    levels), so they come from the tag's cfg, never from the checkpoint.
    """
    if pretrained_cfg is None:
        if not pretrained:
            return {}
        registered = get_pretrained_cfg(variant)
    elif isinstance(pretrained_cfg, str):
        registered = get_pretrained_cfg(f"{variant}.{pretrained_cfg}")
    else:
        if isinstance(pretrained_cfg, Mapping):
            own, tag = pretrained_cfg.get("model_args"), pretrained_cfg.get("tag")
        else:
            own = getattr(pretrained_cfg, "model_args", None)
            tag = getattr(pretrained_cfg, "tag", None)
        if own is not None:
            return dict(own)
        if not tag:
            return {}
        registered = get_pretrained_cfg(f"{variant}.{tag}")
    return dict(getattr(registered, "model_args", None) or {})


def check_finite_forward(model: nn.Module, what: str) -> None:
    """Run ``model`` once in eval mode on a small random image; raise ``ValueError`` if an
    output is not finite. ``model`` may be a timm ``features_only`` wrapper (its
    ``model`` is the network); its training mode is restored afterwards.

    The neurons run their eager loops for this one pass (nothing to compile), then get their
    backends back.
    """
    network = getattr(model, "model", model)
    parameter = next(network.parameters())
    size = 2 * network.size_multiple
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(1, network.in_chans, size, size, generator=generator)
    images = images.to(parameter.device, parameter.dtype)
    training = model.training
    model.eval()
    try:
        with use_backend(network, "torch"), torch.no_grad():
            outputs = model(images)
    finally:
        model.train(training)
    tensors = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    if not all(torch.isfinite(tensor).all() for tensor in tensors):
        raise ValueError(f"{what}: the model's outputs are not finite; the weights are damaged")
