"""A static image encoded once: the stem's leading per-frame modules run on one copy of it.

A static batch ``[B, C, H, W]`` is the same image at every time step. The model lays it out
time-major as an expanded view ``[T, B, C, H, W]`` (stride 0 along T, no copy) and the modules
a family names in ``static_stem`` (the stem's leading convolutions, BatchNorms and pools, before
the first neuron) see such a view: they run on one step, ``[1, B, ...]``, and hand on their
output expanded to ``[T, B, ...]``, again a view. The first neuron reads it at every step.

The result is the one of running every step: forward, backward (the gradient of an expanded
view is the sum over T) and BatchNorm. In training mode a BatchNorm's batch mean and biased
variance over ``T`` identical copies equal those over one, but PyTorch updates the running
variance with the unbiased variance ``var * n / (n - 1)``, where ``n`` counts the values of
all T copies: every BatchNorm inside a named module has its running statistics updated as it
would have been over ``[T * B, ...]`` (with its ``momentum``, or the cumulative average for
``momentum=None``).

A module that receives a tensor varying over time (event frames ``[B, T, C, H, W]``, or the
model with :meth:`~spikezoo.models.SpikingVisionModel.set_static_encoding` off) runs as usual.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from spikezoo.layers.temporal import is_time_constant
from spikezoo.neurons import SpikingNeuron

__all__ = ["encode_static_input_once"]

# the attributes the hooks keep on a module during one call
_REPEATS = "_static_time_steps"
_BEFORE = "_static_running_stats"


def encode_static_input_once(model: nn.Module, paths: Sequence[str]) -> None:
    """Hook the modules of ``model`` named by ``paths`` so that a time-constant input runs once.

    Raises ``ValueError`` if a path names no submodule or a module holding a spiking neuron
    (whose output depends on the steps before it).
    """
    for path in paths:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise ValueError(
                f"{type(model).__name__}.static_stem names {path!r}, which the model has not"
            ) from None
        neurons = [n for n, m in module.named_modules() if isinstance(m, SpikingNeuron)]
        if neurons:
            raise ValueError(
                f"{type(model).__name__}.static_stem names {path!r}, which holds the spiking "
                f"neuron(s) {neurons}: only modules that act on each step alone (convolution, "
                "BatchNorm, pooling) can run once for all steps"
            )
        module.register_forward_pre_hook(_run_one_step)
        module.register_forward_hook(_expand_over_time)
        for norm in module.modules():
            if isinstance(norm, nn.modules.batchnorm._BatchNorm):
                norm.register_forward_pre_hook(_remember_running_stats)
                norm.register_forward_hook(_update_running_stats_for_all_steps)


def _norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _run_one_step(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Forward pre-hook: a time-constant ``[T, B, ...]`` input becomes its first step."""
    x = args[0]
    constant = isinstance(x, Tensor) and is_time_constant(x)
    # a call that raised between the hooks left its state behind: not for this call
    stale = module.__dict__.get(_REPEATS) is not None
    if constant or stale:
        for m in (module, *_norms(module)):
            m.__dict__[_REPEATS] = x.shape[0] if constant else None
    return (x[:1], *args[1:]) if constant else None


def _expand_over_time(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
    """Forward hook: the one-step output ``[1, B, ...]`` expanded to ``[T, B, ...]``."""
    repeats = module.__dict__.get(_REPEATS)
    if repeats is None:
        return None
    for m in (module, *_norms(module)):
        m.__dict__[_REPEATS] = None
    return output.expand(repeats, *output.shape[1:])


def _updates_running_stats(norm: nn.modules.batchnorm._BatchNorm) -> bool:
    return norm.training and norm.track_running_stats and norm.__dict__.get(_REPEATS) is not None


def _remember_running_stats(norm: nn.modules.batchnorm._BatchNorm, args: tuple) -> None:
    """Forward pre-hook of a BatchNorm: let the call update copies of its running statistics
    (backward keeps what the call read, so the buffers themselves may change only after it)."""
    if _updates_running_stats(norm):
        setattr(norm, _BEFORE, (norm.running_mean, norm.running_var))
        norm.running_mean = norm.running_mean.clone()
        norm.running_var = norm.running_var.clone()


@torch.no_grad()
def _update_running_stats_for_all_steps(
    norm: nn.modules.batchnorm._BatchNorm, args: tuple[Tensor, ...], output: Tensor
) -> None:
    """Forward hook of a BatchNorm that saw one step: update its running statistics as the
    ``T`` steps would have (the unbiased variance counts ``T`` times the values)."""
    if _BEFORE not in norm.__dict__:
        return
    running_mean, running_var = norm.__dict__.pop(_BEFORE)
    x = args[0]
    var, mean = torch.var_mean(x, dim=[d for d in range(x.dim()) if d != 1], correction=0)
    count = x.numel() // x.shape[1] * norm.__dict__[_REPEATS]
    # momentum None: the cumulative average, over num_batches_tracked (just advanced)
    momentum = norm.momentum
    factor = 1.0 / float(norm.num_batches_tracked) if momentum is None else momentum
    running_mean.copy_(factor * mean + (1 - factor) * running_mean)
    running_var.copy_(factor * (var * count / (count - 1)) + (1 - factor) * running_var)
    norm.running_mean, norm.running_var = running_mean, running_var
