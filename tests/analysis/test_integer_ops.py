"""Operation counts of integer spikes: a value n / norm costs what n binary spikes cost."""

import torch
from torch import nn

import spikezoo  # noqa: F401  (registers the models)
from spikezoo.analysis import OpCounter, profile_model, spike_counts
from spikezoo.deploy import expand_to_binary
from spikezoo.layers import SpikingHadamard, SpikingMatmul, SpikingSum
from spikezoo.models._registry import family_of
from spikezoo.neurons import IntegerNeuron
from tests.deploy.test_binary import assert_counts_are_robust
from tests.reference import load_case


def counted(model: nn.Module, *inputs: torch.Tensor):
    with torch.no_grad(), OpCounter(model, classifier=None) as counter:
        model(*inputs)
    return {layer.name: layer for layer in counter.report().layers}


def test_a_conv_and_a_linear_layer_cost_one_op_per_spike_and_synapse():
    neuron = IntegerNeuron(levels=4)
    counts = torch.tensor([[[[0.0, 1.0], [3.0, 4.0]]]])  # 8 spikes on one channel
    conv = nn.Sequential(neuron, nn.Conv2d(1, 5, 1))
    linear = nn.Sequential(IntegerNeuron(levels=4, norm=1), nn.Linear(4, 3))
    assert counted(conv, counts)["1"].sops == 8 * 5
    assert counted(linear, counts.flatten(1))["1"].sops == 8 * 3


def test_counts_come_from_the_neuron_not_from_the_values():
    # 0 and 1 are counts 0 and 4 here (norm 4): the value test alone would count 1 spike each
    model = nn.Sequential(IntegerNeuron(levels=4), nn.Linear(3, 2))
    layer = counted(model, torch.tensor([[0.0, 9.0, 4.0]]))["1"]
    assert (layer.sops, layer.input) == (8 * 2, "spikes")


class Products(nn.Module):
    def __init__(self):
        super().__init__()
        self.a_spike, self.b_spike = IntegerNeuron(levels=4), IntegerNeuron(levels=2, norm=1)
        self.matmul, self.hadamard, self.sum = SpikingMatmul(), SpikingHadamard(), SpikingSum(-1)

    def forward(self, a, b):
        a, b = self.a_spike(a), self.b_spike(b)
        return self.matmul(a, b.mT), self.hadamard(a, b), self.sum(a)


def test_products_of_two_spike_tensors_cost_one_op_per_pair_of_spikes():
    a = torch.tensor([[[3.0, 0.0, 2.0]]])  # counts 3, 0, 2
    b = torch.tensor([[[2.0, 1.0, 1.0]]])  # counts 2, 1, 1
    layers = counted(Products(), a, b)
    assert layers["matmul"].sops == 3 * 2 + 0 * 1 + 2 * 1
    assert layers["hadamard"].sops == 3 * 2 + 2 * 1
    assert layers["sum"].sops == 5


def test_spike_counts_tells_tagged_binary_and_real_input_apart():
    neuron = IntegerNeuron(levels=8, norm=2.0)
    x = torch.tensor([0.4, 3.6, 9.0])
    assert spike_counts(neuron.tag(neuron(x))).tolist() == [0.0, 4.0, 8.0]
    assert spike_counts(torch.tensor([0.0, 1.0])).tolist() == [0.0, 1.0]
    assert spike_counts(torch.tensor([0.5, 1.0])) is None


def test_profile_of_e_spikeformer_counts_its_binary_expansion_s_operations():
    # the reference vectors' trained-statistics model fires; float64, counts shown robust
    case = load_case("families/sdt3_tiny")
    model = case.build()
    model.load_state_dict(family_of(model).checkpoint_filter_fn(case.state, model))
    model.eval()
    x = case.tensors["input"]
    binary = expand_to_binary(model)
    assert_counts_are_robust(model, binary, x)
    integer, expanded = profile_model(model, x, repeats=1), profile_model(binary, x, repeats=1)
    assert integer.ops.sops == expanded.ops.sops > 0
    # only the stem reads real values
    assert integer.ops.macs == expanded.ops.macs == integer.ops.per_layer().column("macs")[0]
    assert integer.rates.mean_rate == expanded.rates.mean_rate > 0
