"""The small networks of tests/models/families.py, made to spike on a fixed input."""

import torch

from spikezoo.cli.demo import calibrate_batchnorm
from spikezoo.neurons import MultiStepNeuron
from tests.models.families import tiny

#: The families whose attention layers the analysis tests name.
SDT, RESFORMER = "spike_driven_transformer", "spiking_resformer"


def eager(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every neuron on the eager ``torch`` backend (nothing to compile)."""
    for module in model.modules():
        if isinstance(module, MultiStepNeuron):
            module.backend = "torch"
    return model


def spiking(family: str, images: torch.Tensor) -> torch.nn.Module:
    """The small network of ``family`` (eager), in eval mode with BN statistics taken from
    ``images``, so that it spikes."""
    model = eager(tiny(family))
    calibrate_batchnorm(model, images[:1])
    return model.eval()
