"""Spiking neurons: stateless multi-step layers over time-major ``[T, ...]`` input, and integer
neurons (0..D spikes in one step)."""

from spikezoo.neurons.base import SpikingNeuron
from spikezoo.neurons.functional import (
    BACKENDS,
    multistep_if,
    multistep_lif,
    multistep_neuron,
    multistep_plif,
)
from spikezoo.neurons.integer import IntegerNeuron, IntegerSpikes
from spikezoo.neurons.model_backend import set_backend, use_backend
from spikezoo.neurons.modules import MultiStepIF, MultiStepLIF, MultiStepNeuron, MultiStepPLIF
from spikezoo.neurons.saved_spikes import (
    PackedCounts,
    PackedSpikes,
    Recomputed,
    compact_saved_spikes,
    compacting,
    mark_integer_spikes,
    mark_spikes,
    marked_as_spikes,
    pack_spikes,
    register_recipe,
)
from spikezoo.neurons.surrogate import Surrogate, get_surrogate, register_surrogate, surrogate_names

__all__ = [
    "BACKENDS",
    "IntegerNeuron",
    "IntegerSpikes",
    "MultiStepIF",
    "MultiStepLIF",
    "MultiStepNeuron",
    "MultiStepPLIF",
    "PackedCounts",
    "PackedSpikes",
    "Recomputed",
    "SpikingNeuron",
    "Surrogate",
    "compact_saved_spikes",
    "compacting",
    "get_surrogate",
    "mark_integer_spikes",
    "mark_spikes",
    "marked_as_spikes",
    "multistep_if",
    "multistep_lif",
    "multistep_neuron",
    "multistep_plif",
    "pack_spikes",
    "register_recipe",
    "register_surrogate",
    "set_backend",
    "surrogate_names",
    "use_backend",
]
