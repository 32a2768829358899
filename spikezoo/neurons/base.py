"""The base class of every spikezoo neuron layer, whatever its dynamics."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["SpikingNeuron"]


class SpikingNeuron(nn.Module):
    """Base class of spikezoo's neuron layers: binary multi-step neurons
    (:class:`~spikezoo.neurons.MultiStepNeuron`) and integer ones
    (:class:`~spikezoo.neurons.IntegerNeuron`).

    Analysis tools (firing rates, operation counts, ``spikezoo profile``) find a model's neurons
    with ``isinstance(module, SpikingNeuron)`` and hook their outputs.
    """

    #: Whether fusing the BatchNorm before this neuron pays (:mod:`spikezoo.layers.bn_neuron`):
    #: the fused pair keeps BatchNorm's input alone and recomputes the rest in backward, which
    #: saves memory where the neuron keeps a float tensor of its own (the multi-step neurons'
    #: membranes), and little where it keeps one byte per value (the integer neurons' mask).
    fuse_with_batch_norm: bool = True

    def spike_counts(self, spikes: Tensor) -> Tensor:
        """The number of binary spikes each value of this layer's output ``spikes`` stands for.

        A binary neuron's output is its own count (0 or 1); an integer neuron's value ``n / norm``
        stands for ``n`` spikes.
        """
        return spikes
