"""The model zoo. Importing it registers every family with timm's ``create_model``."""

import timm

from spikezoo.models._base import TIME_REDUCTIONS, SpikingVisionModel, neuron_factory
from spikezoo.models._checkpoint import CheckpointMismatchError, guess_architecture
from spikezoo.models._pretrained import SpikingPretrainedCfg
from spikezoo.models.spike_driven_transformer import SpikeDrivenTransformer
from spikezoo.models.spike_driven_transformer_v2 import SpikeDrivenTransformerV2
from spikezoo.models.spiking_resformer import SpikingResformer

#: Every spikezoo entry point registered with timm.
MODEL_NAMES = tuple(
    name
    for family in ("spike_driven_transformer", "spiking_resformer", "spike_driven_transformer_v2")
    for name in timm.list_models(module=family)
)

__all__ = [
    "MODEL_NAMES",
    "TIME_REDUCTIONS",
    "CheckpointMismatchError",
    "SpikeDrivenTransformer",
    "SpikeDrivenTransformerV2",
    "SpikingPretrainedCfg",
    "SpikingResformer",
    "SpikingVisionModel",
    "guess_architecture",
    "neuron_factory",
]
