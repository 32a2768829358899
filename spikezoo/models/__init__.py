"""The model zoo. Importing it registers every family with timm's ``create_model``."""

from spikezoo.models._base import TIME_REDUCTIONS, SpikingVisionModel, neuron_factory
from spikezoo.models._checkpoint import CheckpointMismatchError, guess_architecture
from spikezoo.models._pretrained import SpikingPretrainedCfg
from spikezoo.models.spike_driven_transformer import SpikeDrivenTransformer
from spikezoo.models.spiking_resformer import SpikingResformer

__all__ = [
    "TIME_REDUCTIONS",
    "CheckpointMismatchError",
    "SpikeDrivenTransformer",
    "SpikingPretrainedCfg",
    "SpikingResformer",
    "SpikingVisionModel",
    "guess_architecture",
    "neuron_factory",
]
