"""Each paper's neuron, the default of its layers."""

from functools import partial

from spikezoo.neurons import MultiStepLIF

#: Spike-driven Transformer: LIF, tau 2, threshold 1, hard reset to 0, sigmoid surrogate (alpha 4).
SDT_NEURON = partial(MultiStepLIF, surrogate="sigmoid")

#: SpikingResformer: the same LIF with the arctan surrogate (alpha 2).
RESFORMER_NEURON = partial(MultiStepLIF, surrogate="atan")
