"""The integer neuron: E-SpikeFormer's two spike functions, its tag, and how tools see it."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from einops import rearrange
from torch import nn

from spikezoo.analysis import FiringRateMonitor
from spikezoo.layers import ConvBN
from spikezoo.neurons import IntegerNeuron, IntegerSpikes, SpikingNeuron, set_backend, use_backend

# Inputs on both sides of every boundary: below 0, 0, halves, D, above D.
X = torch.tensor([-1.0, 0.0, 0.3, 0.5, 1.5, 2.5, 3.7, 4.0, 4.5], dtype=torch.float64)


def test_base_models_spike_rounds_half_to_even_and_passes_the_gradient_on_the_closed_window():
    x = X.clone().requires_grad_()
    y = IntegerNeuron(levels=4)(x)
    y.sum().backward()
    assert y.tolist() == [0, 0, 0, 0, 0.5, 0.5, 1, 1, 1]  # torch.round: 0.5 -> 0, 2.5 -> 2
    assert x.grad.tolist() == [0, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0]


def test_large_models_spike_rounds_half_up_and_passes_the_gradient_on_the_open_window():
    x = X.clone().requires_grad_()
    y = IntegerNeuron(levels=4, rounding="half_up", gradient_window="open")(x)
    y.sum().backward()
    assert y.tolist() == [0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1]
    assert x.grad.tolist() == [0, 0, 0.25, 0.25, 0.25, 0.25, 0.25, 0, 0]


def test_norm_one_returns_the_count_and_spike_counts_recovers_it_for_any_norm():
    x = torch.linspace(-2, 10, 97, dtype=torch.float64)
    counts = IntegerNeuron(levels=8, norm=1)(x)
    assert counts.tolist() == torch.round(x.clamp(0, 8)).tolist()
    for norm in (8.0, 3.0, 0.7):
        neuron = IntegerNeuron(levels=8, norm=norm)
        assert torch.equal(neuron.spike_counts(neuron(x)), counts)


def test_it_is_elementwise_over_any_shape_including_time_major():
    x = torch.randn(3, 2, 4, 5, 5, dtype=torch.float64) * 3
    neuron = IntegerNeuron(levels=4)
    assert torch.equal(neuron(x), neuron(x.flatten()).view_as(x))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"levels": 0}, "levels must be an integer >= 1, got 0"),
        ({"levels": 2.5}, "levels must be an integer >= 1, got 2.5"),
        ({"norm": 0}, "norm must be a positive number, got 0"),
        ({"norm": -4.0}, "norm must be a positive number, got -4.0"),
        ({"rounding": "nearest"}, "rounding must be one of ['half_even', 'half_up']"),
        ({"gradient_window": "half"}, "gradient_window must be one of ['closed', 'open']"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError) as error:
        IntegerNeuron(**kwargs)
    assert message in str(error.value)


def test_the_tag_survives_moves_of_values_and_no_arithmetic():
    neuron = IntegerNeuron(levels=4)
    spikes = neuron.tag(neuron(torch.rand(2, 3, 4, 5) * 5))
    moved = [
        spikes.reshape(6, 20),
        spikes.flatten(2).transpose(-1, -2),
        spikes.mT,
        spikes.permute(3, 0, 1, 2)[1:],
        rearrange(spikes, "t b c n -> b (t c) n"),
    ]
    for tensor in moved:
        assert isinstance(tensor, IntegerSpikes)
        assert (tensor.levels, tensor.norm) == (4, 4.0)
    for tensor in (spikes + 1, spikes * 2, torch.nn.functional.relu(spikes), spikes.sum()):
        assert type(tensor) is torch.Tensor


def test_planes_are_binary_and_sum_to_the_counts():
    neuron = IntegerNeuron(levels=8, norm=2.0)
    spikes = neuron.tag(neuron(torch.rand(3, 7) * 10))
    planes = spikes.planes()
    assert planes.shape == (8, 3, 7)
    assert set(planes.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(planes.sum(0), spikes.counts())
    assert torch.equal(spikes.counts(), neuron.spike_counts(spikes))


def test_layers_take_it_as_their_neuron_and_tools_see_it_as_a_neuron():
    layer = ConvBN(3, 8, neuron=partial(IntegerNeuron, levels=4)).double().eval()
    assert isinstance(layer.neuron, SpikingNeuron)
    x = torch.rand(2, 1, 3, 6, 6, dtype=torch.float64) * 5
    with FiringRateMonitor(layer) as monitor:
        layer(x)
    record = monitor.rates()["neuron"]
    assert (
        record.spikes.tolist()
        == layer.neuron.spike_counts(layer.neuron(x)).sum((1, 2, 3, 4)).tolist()
    )
    assert record.rate > 1  # counts, up to D per neuron and step


def test_backends_leave_a_model_of_integer_neurons_as_it_is():
    model = nn.Sequential(nn.Linear(2, 2), IntegerNeuron())
    assert set_backend(model, "torch") is model
    with use_backend(model, "torch"):
        pass
    with pytest.raises(ValueError, match="must contain spikezoo neurons"):
        set_backend(nn.Linear(2, 2), "torch")
