"""The model zoo. Importing it registers every family of :data:`FAMILIES` with timm's
``create_model``."""

from spikezoo.models._base import TIME_REDUCTIONS, SpikingVisionModel, neuron_factory
from spikezoo.models._checkpoint import CheckpointMismatchError, guess_architecture
from spikezoo.models._family import ModelFamily, ReferenceCount, TinyConfig
from spikezoo.models._registry import FAMILIES, families, family_of, model_names
from spikezoo.models.spike_driven_transformer import SpikeDrivenTransformer
from spikezoo.models.spike_driven_transformer_v2 import SpikeDrivenTransformerV2
from spikezoo.models.spikformer import Spikformer
from spikezoo.models.spiking_resformer import SpikingResformer
from spikezoo.models.spikingformer import Spikingformer
from spikezoo.weights import SpikingPretrainedCfg

#: Every spikezoo entry point registered with timm, family by family in :data:`FAMILIES` order.
MODEL_NAMES = model_names()

__all__ = [
    "FAMILIES",
    "MODEL_NAMES",
    "TIME_REDUCTIONS",
    "CheckpointMismatchError",
    "ModelFamily",
    "ReferenceCount",
    "SpikeDrivenTransformer",
    "SpikeDrivenTransformerV2",
    "Spikformer",
    "SpikingPretrainedCfg",
    "SpikingResformer",
    "SpikingVisionModel",
    "Spikingformer",
    "TinyConfig",
    "families",
    "family_of",
    "guess_architecture",
    "neuron_factory",
]
