"""The papers' building blocks as drop-in ``nn.Module``s over ``[T, B, C, H, W]`` membranes."""

from spikezoo.layers.defaults import RESFORMER_NEURON, SDT_NEURON
from spikezoo.layers.dssa import DSSA, Downsample, freeze_firing_rates
from spikezoo.layers.mlp import GWSFFN, SpikingMLP
from spikezoo.layers.sdsa import SDSA, erode
from spikezoo.layers.sps import SPS, parse_pooling
from spikezoo.layers.temporal import ConvBN, DropPath, NeuronFactory, PerStep, check_tbchw, per_step

__all__ = [
    "DSSA",
    "GWSFFN",
    "RESFORMER_NEURON",
    "SDSA",
    "SDT_NEURON",
    "SPS",
    "ConvBN",
    "Downsample",
    "DropPath",
    "NeuronFactory",
    "PerStep",
    "SpikingMLP",
    "check_tbchw",
    "erode",
    "freeze_firing_rates",
    "parse_pooling",
    "per_step",
]
