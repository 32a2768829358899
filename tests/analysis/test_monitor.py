"""FiringRateMonitor: per layer, per step and per head, against the recorded spikes themselves."""

import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from spikezoo.analysis import FiringRateMonitor, Table, plot_firing_rates, spiking_neurons
from spikezoo.layers import DSSA, SDSA
from tests.analysis.tiny_models import RESFORMER, SDT, spiking
from tests.models.families import TIME_STEPS


def record_spikes(model):
    spikes = {}
    handles = [
        neuron.register_forward_hook(
            lambda _m, _i, out, name=name: spikes.setdefault(name, []).append(out.clone())
        )
        for name, neuron in spiking_neurons(model)
    ]
    return spikes, handles


def heads_of(name, model):
    """(heads, spikes -> [T, heads, B, ...]) for neurons inside attention, layer by layer."""
    for prefix, module in model.named_modules():
        if isinstance(module, SDSA) and name.startswith(prefix + "."):
            if name.endswith("kv_lif"):  # [T, B, heads, 1, d]
                return module.num_heads, lambda s: s.transpose(1, 2)
            if name.endswith(("q_lif", "k_lif", "v_lif")):  # [T, B, heads*d, H, W]
                return module.num_heads, lambda s, h=module.num_heads: s.unflatten(
                    2, (h, -1)
                ).transpose(1, 2)
        if isinstance(module, DSSA) and name.startswith(prefix + "."):
            if name.endswith("attn_lif"):
                return module.num_heads, lambda s: s.transpose(1, 2)
            if name.endswith(("in_lif", "proj.lif")):
                return module.num_heads, lambda s, h=module.num_heads: s.unflatten(
                    2, (h, -1)
                ).transpose(1, 2)
    return None, None


@pytest.mark.parametrize("family", [SDT, RESFORMER])
def test_rates_per_layer_step_and_head_are_those_of_the_spikes(family, images):
    model = spiking(family, images)
    spikes, handles = record_spikes(model)
    with FiringRateMonitor(model) as monitor, torch.no_grad():
        model(images[:1])
        model(images[1:])
    for handle in handles:
        handle.remove()
    rates = monitor.rates()
    assert rates.samples == 2
    assert [r.name for r in rates.records] == [name for name, _ in spiking_neurons(model)]

    per_layer = {row["layer"]: row for row in rates.per_layer()}
    per_head = rates.per_head().to_dicts()
    with_heads = set()
    for name, calls in spikes.items():
        both = torch.cat(calls, dim=1)  # the two calls of one sample each
        row = per_layer[name]
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
    assert len(with_heads) == (8 if family == SDT else 6)
    assert 0 < rates.mean_rate < 1


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
    with pytest.raises(ImportError, match=r"pip install 'spikezoo-vit\[analysis\]'"):
        Table(["a"], [[1]]).to_pandas()
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    rates = FiringRateMonitor(spiking(SDT, images)).run(images, progress=False)
    with pytest.raises(ImportError, match=r"plots need matplotlib: pip install"):
        plot_firing_rates(rates)
