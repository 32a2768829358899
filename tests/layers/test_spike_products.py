"""The attention products: each computes its operator, and marks spikes made of spikes."""

import torch

from spikezoo.layers import SpikingHadamard, SpikingMatmul, SpikingSum
from spikezoo.neurons import MultiStepLIF, compact_saved_spikes, marked_as_spikes


def lif_spikes(*shape):
    return MultiStepLIF(backend="torch")(torch.randn(*shape, requires_grad=True) * 2)


def test_each_module_computes_its_operator():
    a, b = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    assert torch.equal(SpikingMatmul()(a, b), a @ b)
    assert torch.equal(SpikingHadamard()(a, a.flip(0)), a * a.flip(0))
    assert torch.equal(SpikingSum(dim=-2)(a), a.sum(-2, keepdim=True))


def test_a_product_of_marked_spikes_is_marked_and_of_anything_else_not():
    with compact_saved_spikes():
        q, kv = lif_spikes(4, 2, 8, 16), lif_spikes(4, 2, 8, 1)
        assert marked_as_spikes(SpikingHadamard()(q, kv))  # broadcast, as SDSA's q * kv
        assert not marked_as_spikes(SpikingHadamard()(q, torch.rand(16)))
