"""FiringRateMonitor: per layer, per step and per head, against the recorded spikes themselves."""

import sys
from types import MappingProxyType

import numpy as np
import pytest
import torch
from einops import rearrange, reduce, repeat
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from spikezoo.analysis import (
    FiringRateMonitor,
    OpCounter,
    Table,
    attention_maps,
    measure_saved_tensors,
    plot_firing_rates,
    spiking_neurons,
)
from spikezoo.layers import (
    DSSA,
    SDSA,
    SSA,
    LinearSpikingAttention,
    SpikingAttention,
    SpikingHadamard,
    TokenQKAttention,
)
from spikezoo.neurons import MultiStepLIF
from tests.analysis.tiny_models import ATTENTION_FAMILIES, RESFORMER, SDT, SDT_V2, spiking
from tests.models.families import TIME_STEPS


def record_outputs(model, names):
    """name -> the outputs of every call of the submodule ``name`` (and the hooks' handles)."""
    outputs = {}
    handles = [
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: outputs.setdefault(name, []).append(out.clone())
        )
        for name in names
    ]
    return outputs, handles


#: where each attention layer's neurons hold their heads, read off the layers' forward code
HEAD_AXES = {
    SDSA: {"q_lif": "channels", "k_lif": "channels", "v_lif": "channels", "kv_lif": "axis"},
    DSSA: {"in_lif": "channels", "attn_lif": "axis", "proj.neuron": "channels"},
    LinearSpikingAttention: dict.fromkeys(("q_lif", "k_lif", "v_lif", "attn_lif"), "channels"),
    SSA: dict.fromkeys(("q_lif", "k_lif", "v_lif", "attn_lif"), "channels"),
    TokenQKAttention: {"q_lif": "channels", "k_lif": "channels", "mask_lif": "axis"},
}


def heads_of(name, model):
    """(heads, spikes -> [T, heads, B, ...]) for neurons inside attention, layer by layer."""
    for prefix, module in model.named_modules():
        for relative, layout in HEAD_AXES.get(type(module), {}).items():
            if name != f"{prefix}.{relative}":
                continue
            heads = module.num_heads
            if layout == "axis":  # [T, B, heads, ...]
                return heads, lambda s: s.transpose(1, 2)
            return heads, lambda s, h=heads: s.unflatten(2, (h, -1)).transpose(1, 2)
    return None, None


@pytest.mark.parametrize("family", ATTENTION_FAMILIES)
def test_rates_per_layer_step_and_head_are_those_of_the_spikes(family, images):
    model = spiking(family, images, attention_scale=1.0 if family == SDT_V2 else None)
    products = [name for name, m in model.named_modules() if isinstance(m, SpikingHadamard)]
    spikes, handles = record_outputs(model, [name for name, _ in spiking_neurons(model)])
    product_outputs, product_handles = record_outputs(model, products)
    with FiringRateMonitor(model) as monitor, torch.no_grad():
        model(images[:1])
        model(images[1:])
    for handle in handles + product_handles:
        handle.remove()
    rates = monitor.rates()
    assert rates.samples == 2
    assert [r.name for r in rates.records] == [name for name, _ in spiking_neurons(model)]
    assert [r.name for r in rates.products] == products
    # SDSA's k * v and q * kv in 2 blocks; QKFormer's mask * k in 2 token attentions
    assert len(products) == {SDT: 4, "qkformer": 2}.get(family, 0)
    in_model_order = [
        name for name, _ in model.named_modules() if name in spikes or name in products
    ]
    assert [row["layer"] for row in rates.per_layer()] == in_model_order

    per_layer = {row["layer"]: row for row in rates.per_layer()}
    per_head = rates.per_head().to_dicts()
    with_heads = set()
    for name, calls in product_outputs.items():
        both = (torch.cat(calls, dim=1) != 0).double()
        row = per_layer[name]
        assert row["neuron"] == "spike product (SpikingHadamard)"
        assert row["rate"] == pytest.approx(both.mean().item(), abs=1e-12)
        steps = [row[f"t{t}"] for t in range(TIME_STEPS)]
        assert steps == pytest.approx([both[t].mean().item() for t in range(TIME_STEPS)], abs=1e-12)
    for name, calls in spikes.items():
        both = torch.cat(calls, dim=1).double()  # the two calls of one sample each
        row = per_layer[name]
        assert row["neuron"] == "MultiStepLIF"
        assert row["rate"] == pytest.approx(both.mean().item(), abs=1e-12)
        steps = [row[f"t{t}"] for t in range(TIME_STEPS)]
        assert steps == pytest.approx([both[t].mean().item() for t in range(TIME_STEPS)], abs=1e-12)
        num_heads, split = heads_of(name, model)
        if num_heads is None:
            continue
        with_heads.add(name)
        by_head = split(both).flatten(2)
        expected = {
            (head, t): by_head[t, head].mean().item()
            for t in range(TIME_STEPS)
            for head in range(num_heads)
        }
        got = {(r["head"], r["step"]): r["rate"] for r in per_head if r["layer"] == name}
        assert got.keys() == expected.keys()
        assert [got[k] for k in expected] == pytest.approx(list(expected.values()), abs=1e-12)
    assert {r["layer"] for r in per_head} == with_heads
    # 4 neurons split by head in each of 2 SDSA, 3 in each DSSA, 4 in each of 8 linear
    # attentions, 4 in each of 2 SSA; QKFormer: 3 in each of 2 token attentions, 4 in its SSA
    heads = {SDT: 8, RESFORMER: 6, SDT_V2: 32, "spikformer": 8, "spikingformer": 8, "qkformer": 10}
    assert len(with_heads) == heads[family]
    assert 0 < rates.mean_rate < 1


def test_spike_products_of_sdsa_are_k_times_v_and_q_times_kv_of_its_neurons(images):
    model = spiking(SDT, images)
    attn = model.blocks[0].attn
    neurons = ("q_lif", "k_lif", "v_lif", "kv_lif")
    prefix = "blocks.0.attn."
    outputs, handles = record_outputs(model, [prefix + name for name in neurons])
    with FiringRateMonitor(model) as monitor, torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    q, k, v, kv = (outputs[prefix + name][0] for name in neurons)
    q, k, v = (
        rearrange(x, "t b (heads d) h w -> t b heads (h w) d", heads=attn.num_heads)
        for x in (q, k, v)
    )
    # the spikes the SDT authors' firing_num.py records as "kv_before" and "x_after_qkv"
    for name, product in (("kv_product", k * v), ("q_mask", q * kv)):
        record = monitor.rates()[prefix + name]
        assert record.product and record.kind == "spike product (SpikingHadamard)"
        assert torch.equal(record.spikes, reduce(product.double(), "t ... -> t", "sum"))
        assert record.neurons == product[0].numel()
        assert record.step_rates() == [product[t].mean().item() for t in range(TIME_STEPS)]
        assert record.head_rates() is None
    assert monitor.rates()[prefix + "q_mask"].rate > 0
    assert "spike product (SpikingHadamard)" in monitor.rates().to_markdown()
    assert monitor.rates().mean_rate == pytest.approx(
        sum(r.spikes.sum().item() for r in monitor.rates().records)
        / sum(r.neurons * r.time_steps for r in monitor.rates().records)
    )


class ToyHeadGate(SpikingAttention):
    """A layer written here, unknown to spikezoo: ``[T, B, dim, H, W]`` -> same shape.

    Spikes ``s = LIF(x)`` per head ``[T, B, heads, N, d]``; a token of a head passes when the
    mean of its spikes reaches 0.5 (``score``, ``[T, B, heads, N, 1]``).
    """

    head_layout = MappingProxyType({"in_lif": "channels", "score_lif": "axis"})
    attention_map = ("score_lif", -1)

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.in_lif = MultiStepLIF(backend="torch")
        self.score_lif = MultiStepLIF(v_threshold=0.5, backend="torch")

    def forward(self, x):
        s = rearrange(
            self.in_lif(x), "t b (heads d) h w -> t b heads (h w) d", heads=self.num_heads
        )
        passed = s * self.score_lif(s.mean(-1, keepdim=True))
        return x + rearrange(passed, "t b heads (h w) d -> t b (heads d) h w", h=x.shape[-2])


class ToyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate = ToyHeadGate(dim=6, num_heads=3)
        self.out_lif = MultiStepLIF(backend="torch")

    def forward(self, images):  # [B, 6, H, W] -> [B]
        x = repeat(images, "b c h w -> t b c h w", t=TIME_STEPS)
        return self.out_lif(self.gate(x)).mean((0, 2, 3, 4))


def test_a_new_attention_layer_gets_per_head_rates_and_maps_from_its_declarations():
    model = ToyNet()
    images = 2 * torch.rand(2, 6, 4, 4, generator=torch.Generator().manual_seed(3))
    outputs, handles = record_outputs(model, ["gate.in_lif", "gate.score_lif"])
    with FiringRateMonitor(model) as monitor, torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    rates = monitor.rates()
    per_head = {(r["layer"], r["head"], r["step"]): r["rate"] for r in rates.per_head()}
    assert {layer for layer, _, _ in per_head} == {"gate.in_lif", "gate.score_lif"}
    spikes = outputs["gate.in_lif"][0]  # [T, B, 3 * 2, 4, 4]: head-major channels
    score = outputs["gate.score_lif"][0]  # [T, B, 3, 16, 1]: the heads axis
    for layer, by_head in (
        ("gate.in_lif", rearrange(spikes, "t b (heads d) h w -> t heads (b d h w)", heads=3)),
        ("gate.score_lif", rearrange(score, "t b heads n one -> t heads (b n one)")),
    ):
        for (t, head), expected in np.ndenumerate(by_head.double().mean(-1).numpy()):
            assert per_head[(layer, head, t)] == pytest.approx(expected, abs=1e-12)
    assert 0 < rates["gate.score_lif"].rate < 1
    maps = attention_maps(model, images)
    expected = rearrange(score[:, 0], "t heads (h w) one -> heads h w (t one)", h=4).mean(-1)
    assert maps.keys() == {"gate"} and torch.equal(maps["gate"], expected)


def test_data_loader_with_progress_bar_and_table_formats(images, capsys):
    model = spiking(SDT, images)
    loader = DataLoader(TensorDataset(images.repeat(3, 1, 1, 1), torch.zeros(6)), batch_size=2)
    monitor = FiringRateMonitor(model, layers=["blocks.0.attn.q_lif", "head_lif"])
    rates = monitor.run(loader, progress=True, max_batches=2)
    assert "recording spikes" in capsys.readouterr().err  # tqdm writes to stderr
    assert rates.samples == 4 and [r.name for r in rates.records] == [
        "blocks.0.attn.q_lif",
        "head_lif",
    ]
    with FiringRateMonitor(model, layers=["head_lif"]) as once, torch.no_grad():
        model(images)
    assert rates["head_lif"].rate == pytest.approx(once.rates()["head_lif"].rate, abs=1e-12)

    markdown = rates.to_markdown().splitlines()
    assert markdown[0].split("|")[1].strip() == "layer" and len(markdown) == 4
    csv_lines = rates.to_csv().splitlines()
    assert csv_lines[0] == "layer,neuron,rate,t0,t1" and csv_lines[2].startswith("head_lif,")
    frame = rates.to_pandas()
    assert list(frame.columns) == ["layer", "neuron", "rate", "t0", "t1"]
    assert frame["rate"].tolist() == rates.per_layer().column("rate")
    steps = rates.per_step()
    assert steps.columns == ["layer", "step", "rate"] and len(steps) == 2 * TIME_STEPS


def test_monitor_refuses_what_it_cannot_record(images):
    with pytest.raises(ValueError, match="no spikezoo spiking neurons"):
        FiringRateMonitor(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()))
    model = spiking(SDT, images)
    with pytest.raises(ValueError, match=r"not spikezoo neuron layers of the model: \['head'\]"):
        FiringRateMonitor(model, layers=["head"])
    monitor = FiringRateMonitor(model)
    with pytest.raises(RuntimeError, match="no forward pass was recorded"):
        monitor.rates()
    with monitor, torch.no_grad():
        model(images)
        model.time_steps = 3
        with pytest.raises(ValueError, match="recorded 2 time steps so far, this call has 3"):
            model(images)
    with pytest.raises(TypeError, match="data must yield tensors"):
        monitor.run([["not", "tensors"]], progress=False)
    with pytest.raises(ValueError, match="max_batches must be >= 1"):
        monitor.run(images, max_batches=0)


def test_table_checks_its_rows():
    with pytest.raises(ValueError, match="every row needs 2 values"):
        Table(["a", "b"], [[1]])
    table = Table(["name", "value"], [["x", 1.5], ["y", None]])
    assert table.to_csv() == "name,value\r\nx,1.5\r\ny,\r\n"
    assert list(table) == [{"name": "x", "value": 1.5}, {"name": "y", "value": None}]


def test_optional_packages_are_named_when_missing(monkeypatch, images):
    monkeypatch.setitem(sys.modules, "pandas", None)
    missing = r'Table.to_pandas needs pandas, which is not installed: pip install "spikezoo-vit\['
    with pytest.raises(ImportError, match=missing + r'analysis\]"'):
        Table(["a"], [[1]]).to_pandas()
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    rates = FiringRateMonitor(spiking(SDT, images)).run(images, progress=False)
    with pytest.raises(
        ImportError, match=r"plotting needs matplotlib, which is not installed: pip install"
    ):
        plot_firing_rates(rates)


class Misdeclared(SpikingAttention):
    head_layout = MappingProxyType({"lif": "channels", "proj": "channels"})
    attention_map = ("absent", -1)

    def __init__(self):
        super().__init__()
        self.num_heads = 2
        self.lif = MultiStepLIF(backend="torch")
        self.proj = nn.Identity()

    def forward(self, x):
        return self.proj(self.lif(x))


def test_declarations_that_name_no_neuron_or_no_module_are_refused():
    model = nn.Sequential(Misdeclared())
    with pytest.raises(ValueError, match=r"head_layout names neuron layers; 0.proj is a Identity"):
        FiringRateMonitor(model)
    with pytest.raises(ValueError, match="Misdeclared declares the submodule 'absent'"):
        attention_maps(model, torch.zeros(2, 1, 4, 3, 3))
    Misdeclared.head_layout = MappingProxyType({"lif": "channels", "gone": "axis"})
    try:
        with pytest.raises(ValueError, match="Misdeclared declares the submodule 'gone'"):
            FiringRateMonitor(model)
    finally:
        Misdeclared.head_layout = MappingProxyType({"lif": "channels", "proj": "channels"})


@pytest.mark.parametrize("tool", [FiringRateMonitor, OpCounter])
def test_a_compiled_model_is_refused_before_any_hook_or_call(tool):
    """Hooks on a compiled model's layers would not run, and a first call with them would make
    torch.compile run the model eagerly from then on: the tools ask for ``_orig_mod``."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), MultiStepLIF(backend="torch"))
    compiled = torch.compile(model)
    with (
        pytest.raises(TypeError, match=r"torch.compile'd Sequential.*model\._orig_mod"),
        tool(compiled),
    ):
        pass
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with tool(compiled._orig_mod):  # the module it compiled
        pass


@pytest.mark.parametrize("tool", [attention_maps, measure_saved_tensors])
def test_the_single_pass_tools_refuse_a_compiled_model_before_calling_it(tool):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), MultiStepLIF(backend="torch"))
    calls = []
    model.register_forward_pre_hook(lambda *args: calls.append(1))
    compiled = torch.compile(model)
    with pytest.raises(TypeError, match=rf"{tool.__name__} hooks .*model\._orig_mod"):
        tool(compiled, torch.zeros(2, 1, 3, 5, 5))
    assert calls == []
    assert all(not m._forward_hooks for m in model.modules())
