"""SpikingAttention: the declarations of SDSA, DSSA and LinearSpikingAttention hold, bad ones are
refused when the class is written."""

import functools
from types import MappingProxyType

import pytest
import torch
from torch import nn

from spikezoo.analysis import measure_saved_tensors
from spikezoo.layers import (
    DSSA,
    SDSA,
    SSA,
    LinearSpikingAttention,
    SpikingAttention,
    TokenQKAttention,
)
from spikezoo.neurons import MultiStepLIF, MultiStepNeuron, saved_spikes

T, B, H, W = 2, 2, 4, 4
LAYERS = {
    "SDSA": lambda: SDSA(16, num_heads=4),
    "DSSA": lambda: DSSA(16, num_heads=2, patch_size=2),
    "LinearSpikingAttention": lambda: LinearSpikingAttention(16, num_heads=4),
    "SSA": lambda: SSA(16, num_heads=4),
    "SSA_pre_activation": lambda: SSA(16, num_heads=2, kv_first=False, pre_activation=True),
    "TokenQKAttention": lambda: TokenQKAttention(16, num_heads=4),
}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_declared_neurons_hold_their_heads_where_the_layout_says(kind):
    layer = LAYERS[kind]().eval()
    for module in layer.modules():
        if isinstance(module, MultiStepNeuron):
            module.backend = "torch"
    outputs = {}
    names = [*layer.head_layout, layer.attention_map[0]]
    for name in names:
        layer.declared_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: outputs.__setitem__(name, out)
        )
    with torch.no_grad():
        layer(torch.randn(T, B, 16, H, W, generator=torch.Generator().manual_seed(0)))
    for name, layout in layer.head_layout.items():
        assert isinstance(layer.declared_submodule(name), MultiStepNeuron), name
        output = outputs[name]
        split = layer.split_heads(name, output)
        assert split.shape[:3] == (T, B, layer.num_heads)
        if layout == "channels":  # head h holds channels [h * d, (h + 1) * d)
            d = output.shape[2] // layer.num_heads
            assert torch.equal(split[:, :, 1, 0], output[:, :, d])
        else:
            assert split is output
    token_map = layer.read_attention_map(outputs[layer.attention_map[0]])
    assert token_map.shape == (T, B, layer.num_heads, H * W)


def test_a_class_without_both_declarations_is_refused():
    with pytest.raises(TypeError, match=r"NoMap subclasses SpikingAttention but does not declare"):

        class NoMap(SpikingAttention):
            head_layout = MappingProxyType({"lif": "channels"})

    with pytest.raises(TypeError, match=r"head_layout must map neuron names to one of"):

        class BadLayout(SpikingAttention):
            head_layout = MappingProxyType({"lif": "heads"})
            attention_map = None

    with pytest.raises(TypeError, match=r"attention_map must be None or a \(module name, dim\)"):

        class BadMap(SpikingAttention):
            head_layout = MappingProxyType({})
            attention_map = "lif"


class OneNeuron(SpikingAttention):
    head_layout = MappingProxyType({"lif": "channels", "missing": "axis"})
    attention_map = None

    def __init__(self):
        super().__init__()
        self.num_heads = 3
        self.lif = MultiStepLIF()


def test_reading_names_what_does_not_fit():
    layer = OneNeuron()
    with pytest.raises(ValueError, match=r"declares the submodule 'missing'.*but has none"):
        layer.declared_submodule("missing")
    assert isinstance(layer.declared_submodule("lif"), nn.Module)
    with pytest.raises(ValueError, match=r"expected its 3 heads on dim 2.*shape \(2, 1, 4, 5\)"):
        layer.split_heads("missing", torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="declares no attention map"):
        layer.read_attention_map(torch.zeros(2, 1, 6, 4, 4))
    assert layer.split_heads("lif", torch.zeros(2, 1, 6, 4, 4)).shape == (2, 1, 3, 2, 4, 4)


def test_linear_attention_marks_the_head_copies_of_its_spikes(monkeypatch):
    """Its matmuls save views of head-by-head copies of q, k and v. The copies are marked as
    spikes, so that where compaction reads no values (CUDA's policy, here on the CPU) they are
    kept as bits all the same."""
    torch.manual_seed(0)
    neuron = functools.partial(MultiStepLIF, backend="torch")
    attention = LinearSpikingAttention(16, num_heads=4, neuron=neuron).train()
    monkeypatch.setattr(saved_spikes, "_on_host", lambda t: False)
    report = measure_saved_tensors(attention, torch.randn(T, B, 16, H, W) * 3, compact=True)
    head_dim = 16 // 4
    operands = [  # q, k transposed and v; not k^T v, a d x d sum of products
        t
        for t in report.tensors
        if t.module.endswith("matmul") and t.shape[-2:] != (head_dim, head_dim)
    ]
    assert len(operands) == 3 and all(t.spikes for t in operands)
    assert all(t.kept_nbytes * 8 < t.nbytes for t in operands)
