"""Attention maps against the spikes they summarise, and the figures."""

import matplotlib
import pytest
import torch
from einops import rearrange
from matplotlib.colors import to_rgba
from torch import nn

from spikezoo.analysis import FiringRateMonitor
from spikezoo.analysis.plots import attention_maps, plot_attention, plot_firing_rates
from spikezoo.layers import DSSA, SDSA, SSA, LinearSpikingAttention
from tests.analysis.tiny_models import ATTENTION_FAMILIES, RESFORMER, SDT, SDT_V2, spiking

matplotlib.use("Agg")


@pytest.mark.parametrize("family", ATTENTION_FAMILIES)
def test_attention_maps_are_the_spike_rates_of_each_head(family, images):
    model = spiking(family, images, attention_scale=1.0 if family == SDT_V2 else None)
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
        if isinstance(module, LinearSpikingAttention):

            def keep_linear(m, inputs, out, name=name, heads=module.num_heads):
                # [T, B, heads * d, H, W]: the attention neuron's spikes, head-major channels
                spikes = rearrange(out[:, 0], "t (h d) y x -> h (t d) (y x)", h=heads)
                expected[name] = spikes.mean(1)

            handles.append(module.attn_lif.register_forward_hook(keep_linear))
        if isinstance(module, SSA):

            def keep_ssa(m, inputs, out, name=name):  # q @ k^T @ v: [T, B, heads, N, d]
                expected[name] = rearrange(out[:, 0], "t h n d -> h (t d) n").mean(1)

            handles.append(module.token_product.register_forward_hook(keep_ssa))
    maps = attention_maps(model, images)
    for handle in handles:
        handle.remove()
    grids = {
        SDT: {"blocks.0.attn": (4, 8, 8), "blocks.1.attn": (4, 8, 8)},
        RESFORMER: {"stages.0.0": (1, 32, 32), "stages.1.1": (2, 16, 16)},
        # Meta-SpikeFormer: 6 + 2 transformer blocks after each stage's downsampling, 2 x 2 tokens
        SDT_V2: {f"stages.3.{i}.attn": (2, 2, 2) for i in range(1, 7)},
        "spikformer": {"blocks.0.attn": (4, 8, 8), "blocks.1.attn": (4, 8, 8)},
        "spikingformer": {"blocks.0.attn": (4, 8, 8), "blocks.1.attn": (4, 8, 8)},
    }
    grids[SDT_V2].update({f"stages.4.{i}.attn": (2, 2, 2) for i in (1, 2)})
    assert {name: tuple(m.shape) for name, m in maps.items()} == grids[family]
    for name, grid in maps.items():
        if family == SDT_V2:  # means of 0/1 over d = 16 or 20 channels: float32 rounding
            torch.testing.assert_close(grid.flatten(1), expected[name], rtol=0, atol=1e-6)
        else:  # means over powers of two: exact
            assert torch.equal(grid.flatten(1), expected[name]), name
    assert any(grid.sum() > 0 for grid in maps.values())

    figure = plot_attention(images[0].sigmoid(), maps[name], title=name)
    assert len(figure.axes) == grid.shape[0] and figure.axes[0].get_title() == "head 0"
    rates = FiringRateMonitor(model).run(images, progress=False)
    figure = plot_firing_rates(rates, title=family)
    bars, heat = figure.axes[:2]
    assert len(bars.patches) == len(rates.layers) == len(rates.records) + len(rates.products)
    products = [bar for bar in bars.patches if bar.get_facecolor() == to_rgba("tab:orange")]
    assert len(products) == len(rates.products)
    assert heat.images[0].get_array().shape == (len(rates.layers), 2)


def test_plot_inputs_are_checked():
    with pytest.raises(ValueError, match="has no attention layer with an attention map"):
        attention_maps(nn.Conv2d(3, 3, 1), torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"maps must be \[heads, h, w\]"):
        plot_attention(torch.rand(3, 8, 8), torch.rand(8, 8))
