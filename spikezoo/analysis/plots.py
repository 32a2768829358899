"""Plots of firing rates and of spiking attention over an image (needs matplotlib).

Install the plotting extra with ``pip install 'spikezoo-vit[analysis]'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikezoo.analysis.monitor import FiringRates
from spikezoo.layers import DSSA, SDSA

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image

__all__ = ["attention_maps", "plot_attention", "plot_firing_rates"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "spikezoo's plots need matplotlib: pip install 'spikezoo-vit[analysis]'"
        ) from error
    return plt


def plot_firing_rates(rates: FiringRates, title: str | None = None) -> Figure:
    """Firing rate per layer (bars) and per layer and time step (heat map); a ``Figure``."""
    plt = _pyplot()
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
    bars.barh(positions, table.column("rate"), color="tab:blue")
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
    """Spiking attention of every SDSA and DSSA layer for ``inputs[0]``: name -> ``[heads, H, W]``.

    Runs ``model(inputs)`` once (no gradients). ``H x W`` is the layer's token grid.

    * SDSA: the firing rate of ``q * kv`` at each token (mean over T and head channels): where
      the layer's query spikes pass its key-value channel mask, i.e. the tokens it passes on.
    * DSSA: the firing rate of ``attn`` at each token (mean over T and the M patches): how
      strongly the patches attend to that token.
    """
    maps: dict[str, Tensor] = {}
    sizes: dict[str, tuple[int, int]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (SDSA, DSSA)):
            handles.append(
                module.register_forward_pre_hook(
                    lambda _m, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:]))
                )
            )
            # SDSA's q * kv is [T, B, heads, N, d]; DSSA's attn is [T, B, heads, M, N].
            reduce_dim = -1 if isinstance(module, SDSA) else -2
            target = module.q_mask if isinstance(module, SDSA) else module.attn_lif
            handles.append(
                target.register_forward_hook(
                    lambda _m, _i, out, name=name, dim=reduce_dim: maps.__setitem__(
                        name, out[:, 0].float().mean(dim).mean(0)
                    )
                )
            )
    if not handles:
        raise ValueError(f"{type(model).__name__} has no SDSA or DSSA attention layer")
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {name: rate.unflatten(-1, sizes[name]).cpu() for name, rate in maps.items()}


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
