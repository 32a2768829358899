"""The integer neuron's two implementations: PyTorch's operations and the C kernel, bit for bit."""

from __future__ import annotations

import copy
import logging
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import spikezoo  # noqa: F401  (registers the models)
from spikezoo.layers import batch_norms
from spikezoo.neurons import IntegerNeuron, compact_saved_spikes, integer_fire
from spikezoo.neurons.backends.native import Normalisation
from spikezoo.neurons.integer_fire import GRADIENT_WINDOWS, ROUNDINGS
from spikezoo.neurons.saved_spikes import PackedCounts
from tests.models.test_e_spikeformer import TINY

NORMS = [(4, 4.0), (8, 8.0), (4, 1.0), (4, 3.0), (8, 0.7), (300, 300.0)]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32)


def _awkward(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """float32 values around and between every count, with NaN, infinities and -0.0."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 4 + 2
    special = [float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1e-45]
    special = torch.cat([torch.tensor(special), torch.arange(80) * 0.25 - 5])  # halves tie
    count = min(x.numel(), special.numel())
    x.view(-1)[:count] = special[:count]
    return x


@pytest.fixture
def kernel_calls(monkeypatch):
    """The number of calls of each C kernel while the test runs."""
    assert integer_fire._kernel() is not None  # built and probed before the spies go in
    calls = {"fire": 0, "backward": 0}
    fire, backward = integer_fire._fire_by_kernel, integer_fire._backward_by_kernel

    def counted(name, real):
        def call(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(integer_fire, "_fire_by_kernel", counted("fire", fire))
    monkeypatch.setattr(integer_fire, "_backward_by_kernel", counted("backward", backward))
    return calls


def test_the_kernel_is_built_and_passes_its_probe_here():
    assert integer_fire._kernel() is not None


@pytest.mark.parametrize(("levels", "norm"), NORMS)
@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("window", GRADIENT_WINDOWS)
@pytest.mark.parametrize("shape", [(97,), (3, 2, 5, 9, 9), (70_001,)])  # 70,001: two threads
def test_the_kernel_fires_as_pytorch_bit_for_bit(levels, norm, rounding, window, shape,
                                                 kernel_calls):  # fmt: skip
    x = _awkward(shape, seed=len(shape))
    settings = (levels, norm, rounding, window)
    with_counts = levels <= 255
    spikes, inside, counts = integer_fire.fire(x, *settings, True, with_counts)
    expected = integer_fire.fire_by_pytorch(x, *settings, True, with_counts)
    assert torch.equal(_bits(spikes), _bits(expected[0]))
    assert torch.equal(inside, expected[1])
    assert counts is None if not with_counts else torch.equal(counts, expected[2])
    alone, no_mask, no_counts = integer_fire.fire(x, *settings, False, False)
    assert torch.equal(_bits(alone), _bits(expected[0])) and no_mask is None and no_counts is None
    grad = _awkward(shape, seed=7) * 3
    got = integer_fire.backward(grad, inside, norm)
    assert torch.equal(_bits(got), _bits(grad / norm * expected[1]))
    assert kernel_calls == {"fire": 2, "backward": 1}


def _normalisation_of(channels: int, inner: int, affine: bool, contract: bool) -> tuple:
    """``(normalisation, running_var, eps)``: a BatchNorm's map in evaluation, random
    statistics and parameters, ``invstd`` as :func:`spikezoo.layers.batch_norm_fire` forms it."""
    generator = torch.Generator().manual_seed(2)
    mean = torch.randn(channels, generator=generator)
    var = torch.rand(channels, generator=generator) * 4 + 0.1
    weight = torch.randn(channels, generator=generator) if affine else None
    bias = torch.randn(channels, generator=generator) if affine else None
    invstd = torch.rsqrt(var + 1e-5)
    return Normalisation(weight, bias, mean, invstd, inner, contract), var, 1e-5


@pytest.mark.parametrize(("levels", "norm"), NORMS)
@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
# 2 x 3 x 7 x 53 x 50 values: blocks of the kernel that begin and end inside a channel's run,
# on two threads
@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (2, 3, 7, 53, 50)], ids=["1d", "2d"])
def test_reading_through_a_batch_norm_fires_on_its_output_bit_for_bit(
    levels, norm, rounding, affine, shape
):
    contract = batch_norms._kernel().contract
    normalisation, var, eps = _normalisation_of(shape[2], math.prod(shape[3:]), affine, contract)
    x = _awkward(shape, seed=5)
    normalised = F.batch_norm(
        x.flatten(0, 1), normalisation.mean, var, normalisation.weight, normalisation.bias,
        eps=eps,
    ).view(shape)  # fmt: skip
    spikes = integer_fire.fire_normalised(x, normalisation, levels, norm, rounding)
    expected = integer_fire.fire_by_pytorch(normalised, levels, norm, rounding, "closed", False,
                                            False)[0]  # fmt: skip
    assert torch.equal(_bits(spikes), _bits(expected))


def test_the_batch_norm_probe_tells_a_fused_multiply_add_from_two_roundings():
    """Its probe passes for the rounding of PyTorch's BatchNorm kernel (found by spikezoo's
    BatchNorm kernel on its own probe) and fails for the other, so a build that rounds
    otherwise is caught."""
    contract = batch_norms._kernel().contract
    assert integer_fire._map_reproduces_batch_norm(contract)
    assert not integer_fire._map_reproduces_batch_norm(not contract)


@pytest.mark.parametrize(
    "make",
    [lambda x: x.double(), lambda x: x.transpose(-1, -2)],  # not contiguous
    ids=["float64", "strided"],
)
def test_reading_through_a_batch_norm_refuses_what_the_kernel_does_not_take(make):
    x = make(_awkward((2, 1, 4, 6, 6), seed=6))
    normalisation, _, _ = _normalisation_of(4, 36, True, batch_norms._kernel().contract)
    assert not IntegerNeuron().reads_normalisation(x)
    assert IntegerNeuron().forward_normalised(x, normalisation) is None


@pytest.mark.parametrize(
    "make",
    [
        lambda x: x.double(),
        lambda x: x.t(),  # not contiguous
        lambda x: x.as_subclass(torch.nn.Parameter),  # a subclass
    ],
    ids=["float64", "strided", "subclass"],
)
def test_what_the_kernel_does_not_take_runs_pytorchs_operations(make, kernel_calls):
    x = make(_awkward((6, 10), seed=3))
    spikes, inside, _ = integer_fire.fire(x, 4, 4.0, "half_even", "closed", True, False)
    expected = integer_fire.fire_by_pytorch(x, 4, 4.0, "half_even", "closed", True, False)
    torch.testing.assert_close(spikes, expected[0], rtol=0, atol=0, equal_nan=True)
    assert torch.equal(inside, expected[1])
    integer_fire.backward(make(_awkward((6, 10), seed=4)), inside, 4.0)
    assert kernel_calls == {"fire": 0, "backward": 0}


def test_inside_torch_compile_pytorchs_operations_run(kernel_calls):
    neuron = IntegerNeuron(levels=4)
    x = _awkward((4, 33), seed=4)
    compiled = torch.compile(neuron, backend="eager", fullgraph=True)
    assert torch.equal(_bits(compiled(x)), _bits(neuron(x)))
    assert kernel_calls["fire"] == 1  # the eager call only


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("window", GRADIENT_WINDOWS)
def test_the_neuron_computes_the_same_with_and_without_the_kernel(rounding, window, kernel_calls,
                                                                  monkeypatch):  # fmt: skip
    neuron = IntegerNeuron(levels=4, rounding=rounding, gradient_window=window)
    x = _awkward((2, 3, 8, 5, 5), seed=5)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(6))

    def run():
        leaf = x.clone().requires_grad_()
        spikes = neuron(leaf)
        spikes.backward(grad)
        with torch.no_grad():
            return spikes.detach(), leaf.grad, neuron(x)

    with_kernel = run()
    assert kernel_calls == {"fire": 2, "backward": 1}
    monkeypatch.setattr(integer_fire, "_kernel", lambda: None)
    without = run()
    assert kernel_calls == {"fire": 2, "backward": 1}
    for a, b in zip(with_kernel, without, strict=True):
        assert torch.equal(_bits(a), _bits(b))


@pytest.mark.parametrize("compaction", [False, True])
def test_e_spikeformer_trains_the_same_with_and_without_the_kernel(compaction, kernel_calls,
                                                                   monkeypatch):  # fmt: skip
    torch.manual_seed(0)
    model = timm.create_model("sdt_v3_t", **TINY).train()
    model.set_spike_compaction(compaction)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    start = copy.deepcopy(model.state_dict())

    def step():
        model.load_state_dict(start)  # the same running statistics before each step
        model.train().zero_grad()
        logits = model(x)
        logits.square().sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        with torch.no_grad():
            return [logits.detach(), model.eval()(x), *grads]

    with_kernel = step()
    assert kernel_calls["fire"] > 0 and kernel_calls["backward"] > 0
    monkeypatch.setattr(integer_fire, "_kernel", lambda: None)
    without = step()
    for a, b in zip(with_kernel, without, strict=True):
        assert torch.equal(_bits(a), _bits(b))


def test_under_compaction_the_kernels_counts_are_what_is_kept(kernel_calls):
    x = (torch.randn(3, 40, generator=torch.Generator().manual_seed(8)) * 4).requires_grad_()
    with compact_saved_spikes() as compaction:
        spikes = IntegerNeuron(levels=4)(x)
        kept = compaction.pack(spikes)
    assert kernel_calls["fire"] == 1
    assert isinstance(kept, PackedCounts)
    counts = integer_fire.fire_by_pytorch(x.detach(), 4, 4.0, "half_even", "closed", False, True)[2]
    assert torch.equal(kept.counts.view(-1), counts.view(-1))
    assert torch.equal(_bits(compact_saved_spikes.unpack(kept)), _bits(spikes.detach()))


@pytest.mark.parametrize("wrong", ["spikes", "mask", "counts", "gradient"])
def test_a_kernel_unequal_to_pytorch_is_not_used(wrong, monkeypatch, caplog):
    fire, backward = integer_fire._fire_by_kernel, integer_fire._backward_by_kernel

    def fire_off(*args):
        spikes, inside, counts = fire(*args)
        if wrong == "spikes":
            spikes = torch.nextafter(spikes, torch.full_like(spikes, float("inf")))
        elif wrong == "mask" and inside is not None:
            inside = ~inside
        elif wrong == "counts" and counts is not None:
            counts = counts + 1
        return spikes, inside, counts

    def backward_off(*args):
        grad = backward(*args)
        return grad * 2 if wrong == "gradient" else grad

    monkeypatch.setattr(integer_fire, "_fire_by_kernel", fire_off)
    monkeypatch.setattr(integer_fire, "_backward_by_kernel", backward_off)
    integer_fire._kernel.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="spikezoo.neurons.integer_fire"):
            assert integer_fire._kernel() is None
        assert "differs from PyTorch" in caplog.text
        x = _awkward((5, 7), seed=9).requires_grad_()
        spikes = IntegerNeuron(levels=4)(x)
        spikes.sum().backward()
        expected = integer_fire.fire_by_pytorch(
            x.detach(), 4, 4.0, "half_even", "closed", True, False
        )
        assert torch.equal(_bits(spikes.detach()), _bits(expected[0]))  # PyTorch's ran
        assert torch.equal(x.grad, 0.25 * expected[1])
    finally:
        integer_fire._kernel.cache_clear()
