"""Plots of firing rates and of spiking attention over an image (needs matplotlib).

Install the plotting extra with ``pip install "spikezoo-vit[analysis]"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from spikezoo._optional import optional_dependency
from spikezoo.analysis._batches import refuse_compiled
from spikezoo.analysis.monitor import FiringRates
from spikezoo.layers.attention import SpikingAttention

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image

__all__ = ["attention_maps", "plot_attention", "plot_firing_rates"]

_NEURON_COLOUR, _PRODUCT_COLOUR = "tab:blue", "tab:orange"


def _pyplot():
    with optional_dependency("plotting"):
        import matplotlib.pyplot as plt
    return plt


def plot_firing_rates(rates: FiringRates, title: str | None = None) -> Figure:
    """Firing rate per layer (bars) and per layer and time step (heat map); a ``Figure``.

    Spike products are drawn in orange, neuron layers in blue.
    """
    plt = _pyplot()
    from matplotlib.patches import Patch

    table = rates.per_layer()
    names = table.column("layer")
    steps = [c for c in table.columns if c.startswith("t") and c[1:].isdigit()]
    grid = torch.tensor(
        [[float("nan") if v is None else v for v in table.column(step)] for step in steps]
    ).T
    height = 2 + 0.18 * len(names)
    figure, (bars, heat) = plt.subplots(
        1, 2, figsize=(11, height), sharey=True, gridspec_kw={"width_ratios": [2, 1]}
    )
    positions = range(len(names))
    colours = [_PRODUCT_COLOUR if r.product else _NEURON_COLOUR for r in rates.layers]
    bars.barh(positions, table.column("rate"), color=colours)
    if rates.products:
        bars.legend(
            handles=[
                Patch(color=_NEURON_COLOUR, label="neuron layer"),
                Patch(color=_PRODUCT_COLOUR, label="spike product"),
            ],
            fontsize=7,
            loc="lower right",
        )
    bars.set_yticks(list(positions), names, fontsize=7)
    bars.invert_yaxis()
    bars.set_xlabel("firing rate (mean over T, batch, neurons)")
    image = heat.imshow(grid.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    heat.set_xticks(range(len(steps)), [s[1:] for s in steps])
    heat.set_xlabel("time step")
    figure.colorbar(image, ax=heat, label="firing rate")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def attention_maps(model: nn.Module, inputs: Tensor) -> dict[str, Tensor]:
    """The spiking attention of every attention layer for ``inputs[0]``: name -> ``[heads, H, W]``.

    Runs ``model(inputs)`` once (no gradients). ``H x W`` is the layer's token grid (its input's
    last two dimensions). Every :class:`~spikezoo.layers.SpikingAttention` that declares an
    ``attention_map`` has one: the firing rate, at each token, of the output it names (mean over
    T and the declared dim):

    * SDSA: ``q * kv`` (mean over the head channels): where the layer's query spikes pass its
      key-value channel mask, i.e. the tokens it passes on.
    * DSSA: the attention spikes (mean over the M patches): how strongly the patches attend to
      that token.
    * Meta-SpikeFormer's linear attention: its attention neuron (mean over the head channels):
      what the attention passes on at that token.

    Raises ``TypeError`` for a ``torch.compile``'d model (pass ``model._orig_mod``).
    """
    refuse_compiled(model, "attention_maps")
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, SpikingAttention) and module.attention_map is not None
    }
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no attention layer with an attention map (a "
            "SpikingAttention that declares attention_map)"
        )
    maps: dict[str, Tensor] = {}
    grids: dict[str, tuple[int, int]] = {}

    def keep_grid(name: str):
        def hook(layer: nn.Module, args: tuple) -> None:
            grids[name] = tuple(args[0].shape[-2:])

        return hook

    def keep_map(name: str, layer: SpikingAttention):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            maps[name] = layer.read_attention_map(output[:, :1])[:, 0].mean(0)  # [heads, N]

        return hook

    handles = []
    for name, layer in layers.items():
        source = layer.declared_submodule(layer.attention_map[0])
        handles.append(layer.register_forward_pre_hook(keep_grid(name)))
        handles.append(source.register_forward_hook(keep_map(name, layer)))
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {name: _token_grid(name, rates, grids[name]) for name, rates in maps.items()}


def _token_grid(name: str, rates: Tensor, grid: tuple[int, int]) -> Tensor:
    """``rates [heads, N]`` -> ``[heads, H, W]`` for the layer's ``H x W`` input grid."""
    height, width = grid
    if rates.shape[-1] != height * width:
        raise ValueError(
            f"{name}: its attention map has {rates.shape[-1]} tokens, its input grid "
            f"{height}x{width} = {height * width}; check its attention_map declaration"
        )
    return rearrange(rates, "heads (h w) -> heads h w", h=height).cpu()


def plot_attention(
    image: Image.Image | Tensor, maps: Tensor, title: str | None = None, alpha: float = 0.55
) -> Figure:
    """One panel per head: ``maps [heads, h, w]`` upsampled over ``image``; a ``Figure``.

    ``image`` is a ``PIL.Image`` or a ``[3, H, W]`` tensor in ``[0, 1]`` (the image the model
    saw, before normalisation).
    """
    plt = _pyplot()
    if not isinstance(image, Tensor):
        from torchvision.transforms.functional import pil_to_tensor

        image = pil_to_tensor(image.convert("RGB")).float() / 255
    if maps.dim() != 3:
        raise ValueError(f"maps must be [heads, h, w], got shape {tuple(maps.shape)}")
    size = image.shape[-2:]
    upsampled = F.interpolate(maps.unsqueeze(1).float(), size=size, mode="bilinear")[:, 0]
    heads = maps.shape[0]
    figure, axes = plt.subplots(1, heads, figsize=(2.6 * heads, 2.9), squeeze=False)
    for head, ax in enumerate(axes[0]):
        ax.imshow(image.permute(1, 2, 0).numpy())
        ax.imshow(upsampled[head].numpy(), cmap="inferno", alpha=alpha)
        ax.set_title(f"head {head}", fontsize=9)
        ax.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure
