"""Tiny networks of both families, spiking on a fixed input."""

import torch

from spikezoo.analysis import calibrate_batchnorm
from spikezoo.models import SpikeDrivenTransformer, SpikingResformer
from spikezoo.neurons import set_backend

TIME_STEPS = 2


def tiny_sdt(**kwargs) -> SpikeDrivenTransformer:
    args = dict(img_size=32, embed_dim=32, depth=1, num_heads=4, pooling_stat="0011")
    return SpikeDrivenTransformer(**args, num_classes=10, time_steps=TIME_STEPS, **kwargs)


def tiny_resformer(**kwargs) -> SpikingResformer:
    args = dict(img_size=32, depths=(1, 1), embed_dims=(16, 32), num_heads=(1, 2))
    args.update(patch_sizes=(2, 1), stem="conv3x3", group_size=16)
    return SpikingResformer(**args, num_classes=10, time_steps=TIME_STEPS, **kwargs)


TINY_MODELS = {"sdt": tiny_sdt, "resformer": tiny_resformer}


def eager(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every neuron on the eager ``torch`` backend (nothing to compile)."""
    return set_backend(model, "torch")


def spiking(model: torch.nn.Module, images: torch.Tensor) -> torch.nn.Module:
    """``model`` (eager) in eval mode with BN statistics taken from ``images``, so it spikes."""
    calibrate_batchnorm(eager(model), images[:1])
    return model.eval()
