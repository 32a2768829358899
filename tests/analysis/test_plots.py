"""Attention maps against the spikes they summarise, and the figures."""

import matplotlib
import pytest
import torch
from einops import rearrange
from torch import nn

from spikezoo.analysis import FiringRateMonitor
from spikezoo.analysis.plots import attention_maps, plot_attention, plot_firing_rates
from spikezoo.layers import DSSA, SDSA
from tests.analysis.tiny_models import RESFORMER, SDT, spiking

matplotlib.use("Agg")


@pytest.mark.parametrize("family", [SDT, RESFORMER])
def test_attention_maps_are_the_spike_rates_of_each_head(family, images):
    model = spiking(family, images)
    expected, handles = {}, []
    for name, module in model.named_modules():
        if isinstance(module, SDSA):

            def keep_sdsa(m, inputs, out, name=name):
                q, kv = inputs  # [T, B, heads, N, d] and [T, B, heads, 1, d]
                expected[name] = (q * kv)[:, 0].mean((0, -1))

            handles.append(module.q_mask.register_forward_hook(keep_sdsa))
        if isinstance(module, DSSA):

            def keep_dssa(m, inputs, attn, name=name):  # [T, B, heads, M, N]
                expected[name] = rearrange(attn[:, 0], "t h m n -> h (t m) n").mean(1)

            handles.append(module.attn_lif.register_forward_hook(keep_dssa))
    maps = attention_maps(model, images)
    for handle in handles:
        handle.remove()
    grids = {
        SDT: {"blocks.0.attn": (4, 8, 8), "blocks.1.attn": (4, 8, 8)},
        RESFORMER: {"stages.0.0": (1, 32, 32), "stages.1.1": (2, 16, 16)},
    }
    assert {name: tuple(m.shape) for name, m in maps.items()} == grids[family]
    for name, grid in maps.items():
        assert torch.equal(grid.flatten(1), expected[name]), name
    assert any(grid.sum() > 0 for grid in maps.values())

    figure = plot_attention(images[0].sigmoid(), maps[name], title=name)
    assert len(figure.axes) == grid.shape[0] and figure.axes[0].get_title() == "head 0"
    rates = FiringRateMonitor(model).run(images, progress=False)
    figure = plot_firing_rates(rates, title=family)
    bars, heat = figure.axes[:2]
    assert len(bars.patches) == len(rates.records)
    assert heat.images[0].get_array().shape == (len(rates.records), 2)


def test_plot_inputs_are_checked():
    with pytest.raises(ValueError, match="has no SDSA or DSSA attention layer"):
        attention_maps(nn.Conv2d(3, 3, 1), torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"maps must be \[heads, h, w\]"):
        plot_attention(torch.rand(3, 8, 8), torch.rand(8, 8))
