"""spikezoo.deploy.expand_to_binary: integer spikes run as binary virtual steps, exactly.

Equal counts in both models are a property of the models, not of the CPU's rounding, only if no
integer neuron's input, where the two models' inputs differ in the last bits, lies within that
difference of a rounding boundary (``k + 1/2``, 0 or D). :func:`assert_counts_are_robust`
checks exactly that: every neuron input either is the same number in both models (the
attention products are dyadic and exact in both) or differs by less than 1e-12 and lies
farther than 1e-12 from every boundary.
"""

import copy

import pytest
import torch
from torch import nn

from spikezoo.analysis import FiringRateMonitor, OpCounter, is_spike_tensor
from spikezoo.deploy import BinaryOnlySpikes, VirtualSteps, expand_to_binary
from spikezoo.layers import SpikingMatmul
from spikezoo.models._registry import family_of
from spikezoo.neurons import IntegerNeuron
from tests.reference import load_case

MARGIN = 1e-12


def neuron_inputs(model: nn.Module, *inputs: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """``(levels, input)`` of every integer neuron call of one forward pass, in call order."""
    seen = []

    def hook(neuron, args):
        seen.append((neuron.levels, args[0].detach().as_subclass(torch.Tensor).clone()))

    handles = [
        m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, IntegerNeuron)
    ]
    with torch.no_grad():
        model(*inputs)
    for handle in handles:
        handle.remove()
    return seen


def assert_counts_are_robust(model: nn.Module, binary: nn.Module, *inputs: torch.Tensor) -> None:
    """Every neuron input of ``binary`` equals ``model``'s, or is too close to it to cross a
    rounding boundary."""
    pairs = zip(neuron_inputs(model, *inputs), neuron_inputs(binary, *inputs), strict=True)
    for (levels, a), (_, b) in pairs:
        boundary = torch.minimum((a - (torch.floor(a) + 0.5)).abs(), a.abs())
        boundary = torch.minimum(boundary, (a - levels).abs())
        differ = a != b
        assert ((a - b).abs() < MARGIN).all()
        assert (boundary[differ] > MARGIN).all()


@pytest.fixture(scope="module")
def sdt3():
    """The reference vectors' E-SpikeFormer with its weights, in eval mode, and its input."""
    case = load_case("families/sdt3_tiny")
    model = case.build()
    model.load_state_dict(family_of(model).checkpoint_filter_fn(case.state, model))
    return model.eval(), case.tensors["input"], case.tensors["logits_eval"]


def test_the_expanded_model_gives_the_reference_logits_and_counts_the_same_operations(sdt3):
    model, x, reference = sdt3
    binary = expand_to_binary(model)
    assert_counts_are_robust(model, binary, x)
    seen = []
    for module in binary.modules():
        if isinstance(module, VirtualSteps):
            module.layer.register_forward_pre_hook(lambda m, args: seen.extend(args))
    with torch.no_grad(), OpCounter(model) as integer, OpCounter(binary) as expanded:
        logits = model(x)
        binary_logits = binary(x)
    torch.testing.assert_close(binary_logits, reference, rtol=0, atol=1e-9)
    torch.testing.assert_close(logits, reference, rtol=0, atol=1e-9)

    # every spike-reading layer saw binary spikes only (the stem reads the pixels)
    assert all(type(t) is torch.Tensor for t in seen)
    integer_layers, binary_layers = integer.report().layers, expanded.report().layers
    assert [layer.name + ".layer" for layer in integer_layers[1:]] == [
        layer.name for layer in binary_layers[1:]
    ]
    for int_layer, bin_layer in zip(integer_layers, binary_layers, strict=True):
        assert (int_layer.sops, int_layer.macs) == (bin_layer.sops, bin_layer.macs), int_layer.name
    assert integer.report().sops == expanded.report().sops > 0
    assert {layer.input for layer in binary_layers[1:]} == {"spikes"}


def test_the_expanded_model_fires_the_same_spikes(sdt3):
    model, x, _ = sdt3
    binary = expand_to_binary(model)
    with torch.no_grad(), FiringRateMonitor(model) as integer, FiringRateMonitor(binary) as bits:
        model(x)
        binary(x)
    for a, b in zip(integer.rates().layers, bits.rates().layers, strict=True):
        assert a.name == b.name and torch.equal(a.spikes, b.spikes)


def test_a_bias_counts_once_not_once_per_virtual_step():
    torch.manual_seed(0)
    model = nn.Sequential(IntegerNeuron(levels=8, norm=2.0), nn.Conv2d(3, 4, 3, padding=1))
    model = model.double()
    with torch.no_grad():
        model[1].bias.fill_(5.0)
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64) * 9
    binary = expand_to_binary(model)
    assert_counts_are_robust(model, binary, x)
    with torch.no_grad():
        torch.testing.assert_close(binary(x), model(x), rtol=0, atol=1e-12)


class Bilinear(nn.Module):
    """``q @ k^T`` of two integer spike tensors of different norms."""

    def __init__(self):
        super().__init__()
        self.q_spike = IntegerNeuron(levels=4)
        self.k_spike = IntegerNeuron(levels=3, norm=1.5)
        self.matmul = SpikingMatmul()

    def forward(self, q, k):
        return self.matmul(self.q_spike(q), self.k_spike(k).transpose(-2, -1))


def test_a_product_of_two_spike_tensors_runs_over_every_pair_of_virtual_steps():
    q = torch.rand(2, 5, 3, dtype=torch.float64) * 5
    k = torch.rand(2, 6, 3, dtype=torch.float64) * 4
    model = Bilinear()
    binary = expand_to_binary(model)
    assert_counts_are_robust(model, binary, q, k)
    operands = []
    binary.matmul.layer.register_forward_pre_hook(lambda m, args: operands.append(args))
    torch.testing.assert_close(binary(q, k), model(q, k), rtol=0, atol=1e-12)
    assert len(operands) == 4 * 3
    assert all(is_spike_tensor(a) and is_spike_tensor(b) for a, b in operands)


def test_integer_spikes_reaching_a_nonlinear_op_are_refused():
    binary = expand_to_binary(nn.Sequential(IntegerNeuron(), nn.Sigmoid()))
    with pytest.raises(TypeError, match="integer spikes reached sigmoid outside a layer"):
        binary(torch.rand(3))
    assert isinstance(binary[0](torch.rand(3)), BinaryOnlySpikes)


def test_the_model_itself_is_left_as_it_was_and_other_input_is_refused():
    model = nn.Sequential(IntegerNeuron(), nn.Linear(3, 2))
    before = copy.deepcopy(model.state_dict())
    binary = expand_to_binary(model)
    assert isinstance(binary[1], VirtualSteps) and isinstance(model[1], nn.Linear)
    assert type(model[0](torch.rand(3))) is torch.Tensor
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="Sequential has no integer neurons"):
        expand_to_binary(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module, got str"):
        expand_to_binary("sdt_v3_t")
