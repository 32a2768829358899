"""Spike analysis: firing rates, synaptic operations, energy, attention maps and profiles.

``FiringRateMonitor`` records per-layer, per-step and per-head firing rates of the neuron layers
and spike products; ``OpCounter`` counts SOPs and MACs and turns them into energy;
``profile_model`` does both and measures throughput (the ``spikezoo profile`` command);
``calibrate_batchnorm`` makes random weights spike as trained ones would. See
``docs/analysis.md`` for the accounting.
"""

from spikezoo.analysis.calibration import calibrate_batchnorm, set_batchnorm_statistics
from spikezoo.analysis.energy import DEFAULT_ENERGY, ENERGY_PRESETS, EnergyModel, get_energy_model
from spikezoo.analysis.inputs import (
    SAMPLE_IMAGE,
    events_from_image,
    image_input,
    is_event_model,
    load_image,
    sample_image_path,
)
from spikezoo.analysis.monitor import (
    FiringRateMonitor,
    FiringRates,
    NeuronRecord,
    spike_products,
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
    spike_counts,
)
from spikezoo.analysis.plots import attention_maps, plot_attention, plot_firing_rates
from spikezoo.analysis.profile import ModelProfile, profile_model
from spikezoo.analysis.report import PerLayerReport, Table
from spikezoo.analysis.saved_tensors import SavedTensor, SavedTensorReport, measure_saved_tensors

__all__ = [
    "DEFAULT_ENERGY",
    "ENERGY_PRESETS",
    "OP_RULES",
    "SAMPLE_IMAGE",
    "EnergyModel",
    "FiringRateMonitor",
    "FiringRates",
    "LayerOps",
    "ModelProfile",
    "NeuronRecord",
    "OpCount",
    "OpCounter",
    "OpReport",
    "PerLayerReport",
    "SavedTensor",
    "SavedTensorReport",
    "Table",
    "attention_maps",
    "calibrate_batchnorm",
    "events_from_image",
    "get_energy_model",
    "image_input",
    "is_event_model",
    "is_spike_tensor",
    "load_image",
    "measure_saved_tensors",
    "plot_attention",
    "plot_firing_rates",
    "profile_model",
    "register_op_rule",
    "sample_image_path",
    "set_batchnorm_statistics",
    "spike_counts",
    "spike_products",
    "spiking_neurons",
]
