"""Spike analysis: firing rates, synaptic operations, energy, attention maps and profiles.

``FiringRateMonitor`` records per-layer, per-step and per-head firing rates; ``OpCounter``
counts SOPs and MACs and turns them into energy; ``profile_model`` does both and measures
throughput (the ``spikezoo profile`` command). See ``docs/analysis.md`` for the accounting.
"""

from spikezoo.analysis.energy import DEFAULT_ENERGY, ENERGY_PRESETS, EnergyModel, get_energy_model
from spikezoo.analysis.monitor import (
    HEAD_LAYOUTS,
    FiringRateMonitor,
    FiringRates,
    NeuronRecord,
    spiking_neurons,
)
from spikezoo.analysis.ops import (
    OP_RULES,
    LayerOps,
    OpCount,
    OpCounter,
    OpReport,
    is_spike_tensor,
    register_op_rule,
)
from spikezoo.analysis.report import Table

__all__ = [
    "DEFAULT_ENERGY",
    "ENERGY_PRESETS",
    "HEAD_LAYOUTS",
    "OP_RULES",
    "EnergyModel",
    "FiringRateMonitor",
    "FiringRates",
    "LayerOps",
    "NeuronRecord",
    "OpCount",
    "OpCounter",
    "OpReport",
    "Table",
    "get_energy_model",
    "is_spike_tensor",
    "register_op_rule",
    "spiking_neurons",
]
