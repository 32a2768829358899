"""Each paper's neuron settings: the one table that the layers' defaults and the models read."""

from __future__ import annotations

from functools import partial
from types import MappingProxyType

from spikezoo.layers.temporal import NeuronFactory
from spikezoo.neurons import MultiStepLIF, MultiStepPLIF

__all__ = [
    "NEURON_TYPES",
    "PAPER_NEURONS",
    "RESFORMER_NEURON",
    "SDT_NEURON",
    "SPIKFORMER_NEURON",
    "SPIKINGFORMER_DVS_NEURON",
    "neuron_factory",
]

#: The neurons a model's ``neuron="..."`` argument names.
NEURON_TYPES = MappingProxyType({"lif": MultiStepLIF, "plif": MultiStepPLIF})

#: Each paper's neuron arguments, by paper. All use LIF with tau 2, threshold 1, a hard reset to
#: 0 and a detached reset (the neurons' defaults); they differ in the surrogate gradient.
PAPER_NEURONS = MappingProxyType(
    {
        # Spike-driven Transformer V1 and V2: sigmoid surrogate, alpha 4
        "spike_driven_transformer": MappingProxyType({"surrogate": "sigmoid"}),
        # SpikingResformer: arctan surrogate, alpha 2
        "spiking_resformer": MappingProxyType({"surrogate": "atan"}),
        # Spikformer and Spikingformer: spikingjelly's MultiStepLIFNode(tau=2.0,
        # detach_reset=True), whose surrogate is its default, sigmoid with alpha 4
        "spikformer": MappingProxyType({"surrogate": "sigmoid"}),
        "spikingformer": MappingProxyType({"surrogate": "sigmoid"}),
    }
)


def neuron_factory(neuron: str | NeuronFactory, paper: str) -> NeuronFactory:
    """``"lif"`` / ``"plif"`` with ``paper``'s settings (:data:`PAPER_NEURONS`), or a user's
    factory unchanged.

    Raises ``ValueError`` for another neuron name or an unknown paper.
    """
    if paper not in PAPER_NEURONS:
        raise ValueError(f"unknown paper {paper!r}; expected one of {sorted(PAPER_NEURONS)}")
    if callable(neuron):
        return neuron
    if neuron not in NEURON_TYPES:
        raise ValueError(
            f"unknown neuron {neuron!r}; expected one of {sorted(NEURON_TYPES)} or a callable"
        )
    return partial(NEURON_TYPES[neuron], **PAPER_NEURONS[paper])


#: Spike-driven Transformer's neuron, the default of its layers.
SDT_NEURON = neuron_factory("lif", "spike_driven_transformer")

#: SpikingResformer's neuron, the default of its layers.
RESFORMER_NEURON = neuron_factory("lif", "spiking_resformer")

#: Spikformer's neuron, the default of its layers (SSA).
SPIKFORMER_NEURON = neuron_factory("lif", "spikformer")

#: The neuron of Spikingformer's event-data files (CIFAR10-DVS, DVS128 Gesture), whose LIFs
#: have ``tau=1.5`` instead of 2.
SPIKINGFORMER_DVS_NEURON = partial(neuron_factory("lif", "spikingformer"), tau=1.5)
