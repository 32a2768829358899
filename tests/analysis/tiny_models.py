"""Tiny networks of the three families, spiking on a fixed input."""

import torch

from spikezoo.analysis import calibrate_batchnorm
from spikezoo.layers import LinearSpikingAttention
from spikezoo.models import SpikeDrivenTransformer, SpikeDrivenTransformerV2, SpikingResformer
from spikezoo.neurons import set_backend

TIME_STEPS = 2


def tiny_sdt(**kwargs) -> SpikeDrivenTransformer:
    args = dict(img_size=32, embed_dim=32, depth=1, num_heads=4, pooling_stat="0011")
    return SpikeDrivenTransformer(**args, num_classes=10, time_steps=TIME_STEPS, **kwargs)


def tiny_resformer(**kwargs) -> SpikingResformer:
    args = dict(img_size=32, depths=(1, 1), embed_dims=(16, 32), num_heads=(1, 2))
    args.update(patch_sizes=(2, 1), stem="conv3x3", group_size=16)
    return SpikingResformer(**args, num_classes=10, time_steps=TIME_STEPS, **kwargs)


def tiny_sdt_v2(**kwargs) -> SpikeDrivenTransformerV2:
    """Its attention scaled by 1 instead of 0.125: on 2 x 2 tokens the attention neurons then
    fire (with 0.125 they stay silent)."""
    args = dict(img_size=32, embed_dims=(8, 16, 32, 40), num_heads=2)
    model = SpikeDrivenTransformerV2(**args, num_classes=10, time_steps=TIME_STEPS, **kwargs)
    for module in model.modules():
        if isinstance(module, LinearSpikingAttention):
            module.scale = 1.0
    return model


TINY_MODELS = {"sdt": tiny_sdt, "resformer": tiny_resformer}
#: every family with spiking attention (the operation tests run on TINY_MODELS only)
ATTENTION_MODELS = {**TINY_MODELS, "sdt_v2": tiny_sdt_v2}


def eager(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every neuron on the eager ``torch`` backend (nothing to compile)."""
    return set_backend(model, "torch")


def spiking(model: torch.nn.Module, images: torch.Tensor) -> torch.nn.Module:
    """``model`` (eager) in eval mode with BN statistics taken from ``images``, so it spikes."""
    calibrate_batchnorm(eager(model), images[:1])
    return model.eval()
