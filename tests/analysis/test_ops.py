"""OpCounter against an independent count of the same recorded inputs, hand calculations and
torch's FlopCounterMode."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from spikezoo.analysis import (
    ENERGY_PRESETS,
    EnergyModel,
    OpCounter,
    get_energy_model,
    is_spike_tensor,
)
from spikezoo.layers import SpikingHadamard, SpikingMatmul, SpikingSum
from spikezoo.neurons import MultiStepLIF, MultiStepNeuron
from tests.analysis.tiny_models import RESFORMER, SDT, eager, spiking
from tests.models.families import TIME_STEPS, build, small_and_full_size, tiny

COUNTED = (nn.Conv2d, nn.Linear, SpikingMatmul, SpikingHadamard, SpikingSum)


def record_inputs(model):
    """Hooks keeping a copy of every counted layer's inputs and output shape, by layer name."""
    records = {}

    def keep(name):
        def hook(module, inputs, output):
            records.setdefault(name, []).append(([x.clone() for x in inputs], output.shape))

        return hook

    handles = [
        m.register_forward_hook(keep(n)) for n, m in model.named_modules() if isinstance(m, COUNTED)
    ]
    return records, handles


def binary(x):
    return bool(((x == 0) | (x == 1)).all())


def independent_count(module, inputs, out_shape):
    """(SOPs, MACs) of one call by the ones-weight rule, written without the library's code.

    Convolutions gather each output's receptive field with ``unfold`` and count its active inputs.
    """
    if isinstance(module, nn.Conv2d):
        (x,) = inputs
        fan_in = module.in_channels // module.groups * math.prod(module.kernel_size)
        if not binary(x):
            return 0, math.prod(out_shape) * fan_in
        fields = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        per_group = fields.view(x.shape[0], module.groups, -1, fields.shape[-1]).sum(2)
        return int(per_group.sum().item()) * (module.out_channels // module.groups), 0
    if isinstance(module, nn.Linear):
        (x,) = inputs
        if not binary(x):
            return 0, math.prod(out_shape) * module.in_features
        return int(x.count_nonzero()) * module.out_features, 0
    if isinstance(module, SpikingMatmul):
        left, right = inputs
        assert not binary(left) and binary(right)  # DSSA: real left operand, spikes on the right
        ones = torch.ones_like(left)
        return int(torch.einsum("...mk,...kn->...mn", ones, right).sum().item()), 0
    if isinstance(module, SpikingHadamard):
        a, b = inputs
        assert binary(a) and binary(b)  # SDSA: both operands are spikes
        return int((a.bool() & b.bool()).sum()), 0
    (x,) = inputs
    assert binary(x)
    return int(x.count_nonzero()), 0


@pytest.mark.parametrize("family", [SDT, RESFORMER])
def test_per_layer_counts_equal_an_independent_ones_weight_count(family, images):
    model = spiking(family, images)
    records, handles = record_inputs(model)
    with OpCounter(model) as counter, torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    report = counter.report()
    assert {layer.name for layer in report.layers} == set(records)
    for layer in report.layers:
        module = model.get_submodule(layer.name)
        expected = [
            independent_count(module, inputs, shape) for inputs, shape in records[layer.name]
        ]
        assert (layer.sops, layer.macs) == tuple(map(sum, zip(*expected, strict=True))), layer.name
    inputs = {layer.name: layer.input for layer in report.layers}
    real = {name for name, kind in inputs.items() if kind == "real"}
    expected_real = {"patch_embed.proj.0.conv"} if family == SDT else {"stem.conv", "head"}
    assert real == expected_real  # the first conv reads pixels; Resformer's head, membranes
    assert report.sops > 0 and report.samples == 2


def reach(length, kernel, stride, padding, dilation):
    """Summed over the positions of one axis: how many outputs each input position feeds."""
    outputs = (length + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    return sum(
        1
        for i in range(length)
        for o in range(outputs)
        for k in range(kernel)
        if o * stride - padding + k * dilation == i
    )


def fan_out_total(module, input_shape, output_shape):
    """Synapses driven by an all-ones input of ``input_shape``: T x fan-out x inputs."""
    if isinstance(module, nn.Conv2d):
        spatial = math.prod(
            reach(length, k, s, p, d)
            for length, k, s, p, d in zip(
                input_shape[-2:],
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                strict=True,
            )
        )
        return input_shape[0] * input_shape[1] * (module.out_channels // module.groups) * spatial
    if isinstance(module, nn.Linear):
        return math.prod(input_shape) * module.out_features
    if isinstance(module, SpikingMatmul):  # [..., K, N] spikes each reach the M rows
        return math.prod(input_shape) * output_shape[-2]
    return math.prod(output_shape if isinstance(module, SpikingHadamard) else input_shape)


def force_neurons(model, spike):
    """Every neuron of ``model`` emits ``spike`` (0 or 1) everywhere; returns the hook handles."""
    return [
        module.register_forward_hook(lambda _m, _i, out: torch.full_like(out, spike))
        for module in model.modules()
        if isinstance(module, MultiStepNeuron)
    ]


@pytest.mark.parametrize("family", [SDT, RESFORMER])
def test_always_firing_gives_fan_out_times_inputs_and_silence_gives_zero(family, images):
    model = spiking(family, images)
    forced = force_neurons(model, 1.0)
    records, handles = record_inputs(model)
    with OpCounter(model) as counter, torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    spike_layers = [layer for layer in counter.report().layers if layer.input == "spikes"]
    assert len(spike_layers) >= 10
    for layer in spike_layers:
        module = model.get_submodule(layer.name)
        ((inputs, output_shape),) = records[layer.name]
        spikes = inputs[-1]
        assert bool((spikes == 1).all()), layer.name
        expected = fan_out_total(module, spikes.shape, output_shape)
        assert layer.sops == expected, layer.name
        assert expected % TIME_STEPS == 0

    for handle in forced:
        handle.remove()
    force_neurons(model, 0.0)
    with OpCounter(model) as silent, torch.no_grad():
        model(images)
    report = silent.report()
    assert report.sops == 0
    assert {layer.name for layer in report.layers if layer.input == "spikes"} >= {
        layer.name for layer in spike_layers
    }


class TwoLayerNet(nn.Module):
    """Linear(4 -> 3) on real input, LIF (tau 2, threshold 1), Linear(3 -> 2) on its spikes."""

    def __init__(self, time_steps=4):
        super().__init__()
        self.time_steps = time_steps
        self.fc1 = nn.Linear(4, 3, bias=False)
        self.lif = MultiStepLIF(backend="torch")
        self.fc2 = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor([[4.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 2.4, 0]]))
            self.fc2.weight.fill_(0.5)

    def forward(self, x):  # [B, 4] -> [B, 2]
        x = x.unsqueeze(0).repeat(self.time_steps, 1, 1)
        return self.fc2(self.lif(self.fc1(x))).mean(0)


def test_hand_built_two_layer_network_matches_a_hand_calculation():
    net = TwoLayerNet()
    # fc1 gives the LIF a constant [4, 0, 1.2]. With h = v + (x - v) / 2: neuron 0 reaches 2 and
    # fires at every step (4 spikes); neuron 1 never fires; neuron 2 charges 0.6, 0.9, 1.05 and
    # fires at t=2, then restarts at 0.6 (1 spike). Five spikes in all.
    with OpCounter(net, classifier="fc2") as counter, torch.no_grad():
        net(torch.tensor([[1.0, 2.0, 0.5, 0.0]]))
    report = counter.report()
    fc1, fc2 = report.layers
    assert (fc1.input, fc1.macs, fc1.sops) == ("real", 4 * 4 * 3, 0)  # T x in x out
    assert (fc2.input, fc2.macs, fc2.sops) == ("spikes", 0, 5 * 2)  # spikes x fan-out
    assert fc2.classifier and not fc1.classifier
    assert report.energy_mj == pytest.approx((4.6 * 48 + 0.9 * 10) * 1e-9, rel=1e-12)
    assert report.classifier_energy_mj == pytest.approx(0.9 * 10 * 1e-9, rel=1e-12)
    assert report.backbone_energy_mj == pytest.approx(4.6 * 48 * 1e-9, rel=1e-12)
    assert report.rate_energy_mj == pytest.approx(report.energy_mj, rel=1e-12)  # linear layers
    assert report.dense_macs == 4 * (4 * 3 + 3 * 2)

    table = report.per_layer()
    assert table.column("layer") == ["fc1", "fc2"] and table.column("sops") == [0.0, 10.0]
    assert report.summary().to_dicts()[0] == {"metric": "macs", "value": 48.0}
    with OpCounter(net, energy="45nm-int8", classifier=None) as int8, torch.no_grad():
        net(torch.tensor([[1.0, 2.0, 0.5, 0.0]]).repeat(3, 1))
    report = int8.report()
    assert report.samples == 3 and (report.macs, report.sops) == (48, 10)  # per sample
    assert report.energy_mj == pytest.approx((0.23 * 48 + 0.03 * 10) * 1e-9, rel=1e-12)


def test_product_rules_by_operand():
    left_spikes = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    real = torch.tensor([[0.5, -2.0], [3.0, 0.25]])
    matmul = SpikingMatmul()
    cases = [  # (left, right) -> SOPs, MACs
        ((real, left_spikes), (3 * 2, 0)),  # ones @ spikes: 3 spikes x 2 rows
        ((left_spikes, real), (3 * 2, 0)),  # spikes @ ones: 3 spikes x 2 columns
        ((left_spikes, left_spikes), (int((left_spikes @ left_spikes).sum()), 0)),
        ((real, real), (0, 2 * 2 * 2)),
    ]
    for operands, expected in cases:
        with OpCounter(matmul) as counter:
            matmul(*operands)
        (layer,) = counter.report().layers
        assert (layer.sops, layer.macs) == expected
    hadamard, column_sum = SpikingHadamard(), SpikingSum(dim=0)
    with OpCounter(hadamard) as counter:
        hadamard(left_spikes, left_spikes.flip(0))  # [[1,0],[1,1]] * [[1,1],[1,0]]: 2 coincide
        hadamard(real, left_spikes)  # one spike operand: one op per spike
        hadamard(real, real)
    assert [(x.sops, x.macs) for x in counter.report().layers] == [(2 + 3, 4)]
    with OpCounter(column_sum) as counter:
        column_sum(left_spikes)
    assert counter.report().layers[0].sops == 3
    with pytest.raises(ValueError, match="at least 2 dimensions"), OpCounter(matmul):
        matmul(torch.ones(2), torch.ones(2, 2))


def test_spike_test_and_energy_presets():
    assert is_spike_tensor(torch.tensor([True, False]))
    assert is_spike_tensor(torch.zeros(3)) and not is_spike_tensor(torch.tensor([1.0, 2.0]))
    assert get_energy_model("45nm-fp32") == EnergyModel(4.6, 0.9, "45nm-fp32")
    assert set(ENERGY_PRESETS) >= {"45nm-fp32", "45nm-fp16", "45nm-int32", "45nm-int8"}
    custom = EnergyModel(e_mac=1.0, e_ac=0.1)
    assert get_energy_model(custom) is custom
    with pytest.raises(ValueError, match="unknown energy preset 'tpu'"):
        get_energy_model("tpu")
    with pytest.raises(ValueError, match="e_ac must be a non-negative number"):
        EnergyModel(e_mac=1.0, e_ac=-1.0)
    with pytest.raises(ValueError, match="not a submodule"):
        OpCounter(nn.Linear(2, 2), classifier="head")


@pytest.mark.parametrize(
    "case",
    small_and_full_size(["sdt_8_768", "spikingresformer_s", "sdt_2_256_cifar", "sdt_v2_8_384"]),
)
def test_dense_mac_totals_agree_with_flop_counter_mode(case):
    """At a reduced input size and T=1, to stay cheap: MACs scale with the resolution alike."""
    model = eager(build(case, time_steps=1)).eval()
    images = torch.randn(1, 3, 32, 32)
    with OpCounter(model) as counter, torch.no_grad():
        model(images)
    with FlopCounterMode(display=False) as flops, torch.no_grad():
        model(images)
    macs = flops.get_total_flops() / 2
    assert counter.report().dense_macs == pytest.approx(macs, rel=0.01)


def test_spike_product_modules_hold_no_state():
    for module in (SpikingMatmul(), SpikingHadamard(), SpikingSum(dim=-2)):
        assert module.state_dict() == {} and not list(module.parameters())
    keys = tiny(SDT).state_dict().keys() | tiny(RESFORMER).state_dict().keys()
    assert not [k for k in keys if any(p in k for p in ("matmul", "kv_product", "kv_sum", "mask"))]


def test_meta_spikeformer_attention_and_repconv_are_counted_by_the_spike_rules(images):
    model = spiking("spike_driven_transformer_v2", images)
    attn = model.stages[3][1].attn
    repconvs = {name: getattr(attn, name)[0].conv1x1 for name in ("q", "k", "v", "proj")}
    operands = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o: operands.__setitem__(m, [x.clone() for x in i]))
        for m in (attn.kv_matmul, attn.q_matmul, *repconvs.values())
    ]
    with OpCounter(model) as counter, torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    layers = {layer.name: layer for layer in counter.report().layers}
    prefix = "stages.3.1.attn."
    kv, q = layers[prefix + "kv_matmul"], layers[prefix + "q_matmul"]
    k_t, v = operands[attn.kv_matmul]
    assert binary(k_t) and binary(v)  # spikes @ spikes: one accumulate per coinciding pair
    assert kv.sops == int((k_t @ v).sum()) > 0 and kv.macs == 0
    q_spikes, kv_counts = operands[attn.q_matmul]
    assert binary(q_spikes) and not binary(kv_counts)  # spikes @ integer counts
    assert q.sops == int(q_spikes.sum()) * kv_counts.shape[-1] > 0 and q.macs == 0
    # RepConv: the 1x1 convolution reads spikes (each reaches every output channel); the
    # depthwise 3x3 reads the padded BN output and costs MACs
    for name, conv in repconvs.items():
        (spikes,) = operands[conv]
        layer = layers[f"{prefix}{name}.0.conv1x1"]
        assert layer.input == "spikes" and binary(spikes)
        assert layer.sops == int(spikes.sum()) * conv.out_channels
    for name in "qkv":  # (a silent attention neuron leaves proj's maps all zero: "spikes")
        assert layers[f"{prefix}{name}.0.conv1x1"].sops > 0
        assert layers[f"{prefix}{name}.0.depthwise"].input == "real"
        assert layers[f"{prefix}{name}.0.depthwise"].macs > 0
    assert layers["stages.3.1.mlp.fc1.0"].input == "spikes"
    assert {name for name, layer in layers.items() if layer.input == "real"} >= {"stem.conv"}
