"""One neuron backend for a whole model: :func:`set_backend`, or :func:`use_backend` for a block.

Every :class:`~spikezoo.neurons.MultiStepNeuron` inside the model gets the backend, whatever
layer holds it (integer neurons, :class:`~spikezoo.neurons.IntegerNeuron`, are one elementwise
op with no backends: a model of them only is left as it is)::

    spikezoo.neurons.set_backend(model, "torch")  # from now on
    with spikezoo.neurons.use_backend(model, "torch"):  # in this block only
        logits = model(images)

:func:`backend_for_work` says which backend pays for a job of a given number of forward passes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import nn

from spikezoo.neurons.backends import BACKEND_ENV, resolve_backend, validate_backend
from spikezoo.neurons.base import SpikingNeuron
from spikezoo.neurons.modules import MultiStepNeuron

__all__ = ["EAGER_MAX_FORWARD_PASSES", "backend_for_work", "set_backend", "use_backend"]

ModelT = TypeVar("ModelT", bound=nn.Module)

#: The most forward passes for which :func:`backend_for_work` runs the neurons eagerly.
EAGER_MAX_FORWARD_PASSES = 20


def _neurons(model: nn.Module) -> list[MultiStepNeuron]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not any(isinstance(module, SpikingNeuron) for module in model.modules()):
        raise ValueError(
            f"model must contain spikezoo neurons (SpikingNeuron), got a "
            f"{type(model).__name__} without any"
        )
    return [module for module in model.modules() if isinstance(module, MultiStepNeuron)]


def set_backend(model: ModelT, backend: str) -> ModelT:
    """Run every neuron of ``model`` on ``backend``; returns ``model``.

    ``backend`` is ``"auto"`` or a name of :func:`spikezoo.neurons.backends.backend_names`.
    Raises ``ValueError`` for an unknown name or a model without spikezoo neurons, and
    ``TypeError`` for something other than an ``nn.Module``; nothing is changed then.
    """
    validate_backend(backend)
    for neuron in _neurons(model):
        neuron.backend = backend
    return model


@contextmanager
def use_backend(model: ModelT, backend: str) -> Iterator[ModelT]:
    """Within the block, every neuron of ``model`` runs on ``backend``.

    On exit, an exception included, each neuron gets back the backend it had before. Raises as
    :func:`set_backend` on entry.
    """
    validate_backend(backend)
    neurons = _neurons(model)
    previous = [neuron.backend for neuron in neurons]
    for neuron in neurons:
        neuron.backend = backend
    try:
        yield model
    finally:
        for neuron, backend_before in zip(neurons, previous, strict=True):
            neuron.backend = backend_before


def backend_for_work(forward_passes: int, device: torch.device | str) -> str:
    """The backend for a job of ``forward_passes`` forward passes of a model on ``device``.

    Where ``"auto"`` would compile the neurons' time loops (``"inductor"``: 15-25 s on a
    2-core CPU the first time, seconds even with PyTorch's compile cache warm; on a CPU it
    does where the C loops of ``"native"`` cannot run, as without a C compiler), a job of at
    most :data:`EAGER_MAX_FORWARD_PASSES` passes runs them eagerly (``"torch"``): the eager
    loops cost it less than the compile. Every other job gets ``"auto"``: more passes, a
    device where ``"auto"`` picks a backend that compiles nothing per job (``"native"`` on a
    CPU, CuPy on CUDA).
    ``SPIKEZOO_BACKEND``, when it names a backend, decides for every job: its value is
    returned (``"auto"`` there means what it means unset). Raises ``ValueError`` for a negative
    ``forward_passes``.
    """
    if forward_passes < 0:
        raise ValueError(f"forward_passes must be >= 0, got {forward_passes}")
    from_environment = os.environ.get(BACKEND_ENV, "").strip()
    if from_environment not in ("", "auto"):
        return from_environment
    if forward_passes > EAGER_MAX_FORWARD_PASSES:
        return "auto"
    first_choice = resolve_backend("auto", torch.empty(0, device=device))[0]
    return "torch" if first_choice == "inductor" else "auto"
