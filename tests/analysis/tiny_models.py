"""The small networks of tests/models/families.py, made to spike on a fixed input."""

import torch

from spikezoo.analysis import calibrate_batchnorm
from spikezoo.layers import LinearSpikingAttention
from spikezoo.neurons import set_backend
from tests.models.families import tiny

#: The families whose attention layers the analysis tests name.
SDT, RESFORMER, SDT_V2 = (
    "spike_driven_transformer",
    "spiking_resformer",
    "spike_driven_transformer_v2",
)
#: Every family with spiking attention.
ATTENTION_FAMILIES = [SDT, RESFORMER, SDT_V2, "spikformer", "spikingformer"]


def eager(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every neuron on the eager ``torch`` backend (nothing to compile)."""
    return set_backend(model, "torch")


def spiking(family: str, images: torch.Tensor, attention_scale: float | None = None):
    """The small network of ``family`` (eager), in eval mode with BN statistics taken from
    ``images``, so that it spikes.

    ``attention_scale`` replaces the scale of Meta-SpikeFormer's linear attention: on the
    2 x 2 tokens of a 32 x 32 image its attention neurons fire with 1 and stay silent with the
    authors' 0.125.
    """
    model = eager(tiny(family))
    if attention_scale is not None:
        for module in model.modules():
            if isinstance(module, LinearSpikingAttention):
                module.scale = attention_scale
    calibrate_batchnorm(model, images[:1])
    return model.eval()
