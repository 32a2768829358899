"""BatchNorm calibration: give an untrained network the statistics of real input.

Freshly initialised BatchNorm statistics (mean 0, variance 1) leave a random spiking network
nearly silent in eval mode. One training-mode pass over a batch, with each BatchNorm averaging
that pass alone, sets statistics under which the network spikes the way a trained one would on
its data: what profiles, analyses and benchmarks of random weights need.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["calibrate_batchnorm", "set_batchnorm_statistics"]


def set_batchnorm_statistics(model: nn.Module, batch: Tensor) -> None:
    """Replace every BatchNorm's running statistics with those of one pass over ``batch``.

    ``batch`` is any input ``model`` accepts (``[B, C, H, W]`` images for a spikezoo model).
    The pass runs in training mode without gradients, so other training-mode statistics
    advance once too (DSSA's firing-rate estimates). Each BatchNorm keeps its momentum; the
    model is left in eval mode.

    Raises ``TypeError`` for a ``model`` that is not an ``nn.Module`` or a ``batch`` that is
    not a tensor, and ``ValueError`` for a model without BatchNorm; nothing is changed then.
    If the pass itself raises, the BatchNorms get their statistics back.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(batch, Tensor):
        raise TypeError(f"batch must be a torch.Tensor, got {type(batch).__name__}")
    norms = [module for module in model.modules() if isinstance(module, _BatchNorm)]
    if not norms:
        raise ValueError(
            f"model must contain BatchNorm layers to calibrate, got a {type(model).__name__} "
            "without any"
        )
    momenta = [norm.momentum for norm in norms]
    statistics = [copy.deepcopy(norm.state_dict()) for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: this one pass sets the statistics
    try:
        with torch.no_grad():
            model.train()(batch)
    except BaseException:
        for norm, state in zip(norms, statistics, strict=True):
            norm.load_state_dict(state)
        raise
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        model.eval()


def calibrate_batchnorm(model: nn.Module, images: Tensor) -> None:
    """:func:`set_batchnorm_statistics` over ``images [B, C, H, W]`` and their three mirror
    images (flipped left-right, upside down, and both), a batch of ``4 B``.

    The mirrors give the statistics of four inputs from one image, so even ``B = 1`` calibrates
    a network. Raises as :func:`set_batchnorm_statistics`.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    mirrors = [images, images.flip(-1), images.flip(-2), images.flip(-1, -2)]
    set_batchnorm_statistics(model, torch.cat(mirrors))
