"""SDT and SpikingResformer assembled from spikingjelly 2.x ``activation_based`` layers.

This is how a researcher builds these networks today with spikingjelly: ``layer.Conv2d``,
``layer.BatchNorm2d`` and ``layer.MaxPool2d`` in ``step_mode="m"`` (they fold T into the batch),
``neuron.LIFNode(step_mode="m")`` (spikingjelly 2.x picks its fastest kernel for the device
itself: its Triton/CUDA kernels on a GPU, the torch loop on a CPU), plain tensor code for the
attention, and :func:`functional.reset_net` before every batch. The computation is the one in
``/work/shared/reference/ARCHITECTURE.md``; the module names are spikezoo's, so a spikezoo
``state_dict()`` loads with ``strict=True`` and both give the same outputs.

``build_sj2_model(spikezoo_model)`` reads the configuration off a spikezoo model.
"""

from __future__ import annotations

import torch
from einops import rearrange
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import Tensor, nn

from spikezoo.models.spike_driven_transformer import SpikeDrivenTransformer
from spikezoo.models.spiking_resformer import SpikingResformer

#: The spikezoo model classes that :func:`build_sj2_model` rebuilds (the other families have no
#: spikingjelly 2.x network written).
SJ2_MODEL_CLASSES = (SpikeDrivenTransformer, SpikingResformer)


def _lif(surrogate_name: str, v_threshold: float = 1.0) -> neuron.LIFNode:
    function = surrogate.Sigmoid(alpha=4.0) if surrogate_name == "sigmoid" else surrogate.ATan()
    return neuron.LIFNode(
        tau=2.0, v_threshold=v_threshold, v_reset=0.0, surrogate_function=function,
        detach_reset=True, step_mode="m",
    )  # fmt: skip


class ConvBN(nn.Module):
    """``[LIF ->] conv -> BN`` on ``[T, B, C, H, W]``."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int | None = None,
        groups: int = 1, bias: bool = False, spiking: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        if spiking:
            self.lif = _lif(spiking)
        padding = kernel // 2 if padding is None else padding
        self.conv = layer.Conv2d(
            cin, cout, kernel, stride, padding, groups=groups, bias=bias, step_mode="m"
        )
        self.bn = layer.BatchNorm2d(cout, step_mode="m")

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, cin, H, W]`` -> ``[T, B, cout, H', W']``."""
        if hasattr(self, "lif"):
            x = self.lif(x)
        return self.bn(self.conv(x))


def _max_pool() -> layer.MaxPool2d:
    return layer.MaxPool2d(3, 2, 1, step_mode="m")


class SPS(nn.Module):
    """Spiking patch splitting with the relative position embedding."""

    def __init__(self, in_chans: int, dim: int, pooling: str) -> None:
        super().__init__()
        widths = [in_chans, dim // 8, dim // 4, dim // 2, dim]
        self.proj = nn.ModuleList(ConvBN(widths[i], widths[i + 1], 3) for i in range(4))
        self.proj_lif = nn.ModuleList(_lif("sigmoid") for _ in range(3))
        self.pool = nn.ModuleList(_max_pool() if p == "1" else nn.Identity() for p in pooling)
        self.rpe = ConvBN(dim, dim, 3, spiking="sigmoid")

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, in_chans, H, W]`` -> ``[T, B, dim, H/r, W/r]`` membranes."""
        for i in range(4):
            x = self.proj[i](x)
            if i < 3:
                x = self.proj_lif[i](x)
            x = self.pool[i](x)
        return x + self.rpe(x)


class SDSA(nn.Module):
    """Spike-driven self-attention (non-DVS)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.shortcut_lif = _lif("sigmoid")
        for name in "qkv":
            setattr(self, name, ConvBN(dim, dim, 1))
            setattr(self, f"{name}_lif", _lif("sigmoid"))
        self.kv_lif = _lif("sigmoid", v_threshold=0.5)
        self.proj = ConvBN(dim, dim, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, dim, H, W]`` -> same shape."""
        height = x.shape[-2]
        s = self.shortcut_lif(x)
        q, k, v = (
            rearrange(
                getattr(self, f"{n}_lif")(getattr(self, n)(s)),
                "t b (heads d) h w -> t b heads (h w) d",
                heads=self.heads,
            )
            for n in "qkv"
        )
        kv = self.kv_lif((k * v).sum(dim=-2, keepdim=True))
        out = rearrange(q * kv, "t b heads (h w) d -> t b (heads d) h w", h=height)
        return x + self.proj(out)


class MLP(nn.Module):
    """Spiking MLP: ``x + fc2(fc1(x))`` (``fc1 = LIF, 1x1 conv, BN``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = ConvBN(dim, hidden, 1, bias=True, spiking="sigmoid")
        self.fc2 = ConvBN(hidden, dim, 1, bias=True, spiking="sigmoid")
        self.residual_hidden = hidden == dim

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, dim, H, W]`` -> same shape."""
        hidden = self.fc1(x)
        if self.residual_hidden:
            hidden = hidden + x
            x = hidden
        return x + self.fc2(hidden)


class SDTBlock(nn.Module):
    """Encoder block: ``MLP(SDSA(x))``."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.attn = SDSA(dim, heads)
        self.mlp = MLP(dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, dim, H, W]`` -> same shape."""
        return self.mlp(self.attn(x))


class SJ2SpikeDrivenTransformer(nn.Module):
    """SDT v1 (image input) from spikingjelly 2.x layers."""

    def __init__(
        self, in_chans: int, num_classes: int, dim: int, depth: int, heads: int,
        mlp_ratio: float, time_steps: int, pooling: str,
    ) -> None:  # fmt: skip
        super().__init__()
        self.time_steps = time_steps
        self.patch_embed = SPS(in_chans, dim, pooling)
        self.blocks = nn.Sequential(
            *(SDTBlock(dim, heads, int(dim * mlp_ratio)) for _ in range(depth))
        )
        self.head_lif = _lif("sigmoid")
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        """``images [B, C, H, W]`` -> logits ``[B, num_classes]`` (mean over time)."""
        functional.reset_net(self)
        x = images.unsqueeze(0).repeat(self.time_steps, 1, 1, 1, 1)
        x = self.blocks(self.patch_embed(x))
        return self.head(self.head_lif(x.flatten(3).mean(3))).mean(0)


class DSSA(nn.Module):
    """Dual spike self-attention with the firing-rate scales (authors' EMA, momentum 0.999)."""

    def __init__(self, dim: int, heads: int, patch: int) -> None:
        super().__init__()
        self.heads, self.momentum = heads, 0.999
        self.in_lif = _lif("atan")
        self.patch_proj = ConvBN(dim, 2 * dim, patch, stride=patch, padding=0)
        self.attn_lif = _lif("atan")
        self.proj = ConvBN(dim, dim, 1, spiking="atan")
        self.register_buffer("firing_rate_x", torch.zeros(1, 1, heads, 1, 1))
        self.register_buffer("firing_rate_attn", torch.zeros(1, 1, heads, 1, 1))
        self.initialised = {"firing_rate_x": False, "firing_rate_attn": False}

    def _rate(self, name: str, spikes: Tensor) -> Tensor:
        if self.training:
            rate = spikes.detach().mean((0, 1, 3, 4), keepdim=True)
            buffer = getattr(self, name)
            if not self.initialised[name] and torch.all(buffer == 0):
                buffer = rate
            self.initialised[name] = True
            setattr(self, name, buffer * self.momentum + rate * (1 - self.momentum))
        return getattr(self, name)

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, dim, H, W]`` -> same shape."""
        height = x.shape[-2]
        s = self.in_lif(x)
        y = rearrange(
            self.patch_proj(s), "t b (heads d) h w -> t b heads d (h w)", heads=self.heads
        )
        y1, y2 = y.chunk(2, dim=3)
        s = rearrange(s, "t b (heads d) h w -> t b heads d (h w)", heads=self.heads)
        head_dim, patches = s.shape[3], y.shape[-1]
        rate_x = self._rate("firing_rate_x", s)
        attn = self.attn_lif((y1.transpose(-1, -2) @ s) / torch.sqrt(rate_x * head_dim))
        rate_attn = self._rate("firing_rate_attn", attn)
        out = (y2 @ attn) / torch.sqrt(rate_attn * patches)
        out = rearrange(out, "t b heads d (h w) -> t b (heads d) h w", h=height)
        return x + self.proj(out)


class GWSFFN(nn.Module):
    """Group-wise spiking feed-forward network (ratio 4, one grouped 3x3 conv)."""

    def __init__(self, dim: int, group_size: int) -> None:
        super().__init__()
        inner = 4 * dim
        self.up = ConvBN(dim, inner, 1, spiking="atan")
        self.convs = nn.ModuleList(
            [ConvBN(inner, inner, 3, groups=inner // group_size, spiking="atan")]
        )
        self.down = ConvBN(inner, dim, 1, spiking="atan")

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, dim, H, W]`` -> same shape."""
        up = self.up(x)
        return x + self.down(self.convs[0](up) + up)


class Downsample(nn.Module):
    """LIF, 3x3 stride-2 conv, BN."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.lif = _lif("atan")
        self.conv = layer.Conv2d(cin, cout, 3, 2, 1, bias=False, step_mode="m")
        self.bn = layer.BatchNorm2d(cout, step_mode="m")

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, cin, H, W]`` -> ``[T, B, cout, H/2, W/2]``."""
        return self.bn(self.conv(self.lif(x)))


class SJ2SpikingResformer(nn.Module):
    """SpikingResformer (image input, LIF neurons) from spikingjelly 2.x layers."""

    def __init__(
        self, in_chans: int, num_classes: int, depths: list[int], dims: list[int],
        heads: list[int], patches: list[int], imagenet_stem: bool, group_size: int,
        time_steps: int,
    ) -> None:  # fmt: skip
        super().__init__()
        self.time_steps = time_steps
        self.stem = ConvBN(
            in_chans, dims[0], 7 if imagenet_stem else 3, stride=2 if imagenet_stem else 1
        )
        self.stem_pool = _max_pool() if imagenet_stem else nn.Identity()
        stages = []
        for i, (depth, dim, head, patch) in enumerate(
            zip(depths, dims, heads, patches, strict=True)
        ):
            units = [Downsample(dims[i - 1], dim)] if i else []
            for _ in range(depth):
                units += [DSSA(dim, head, patch), GWSFFN(dim, group_size)]
            stages.append(nn.Sequential(*units))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(dims[-1], num_classes, bias=False)

    def forward(self, images: Tensor) -> Tensor:
        """``images [B, C, H, W]`` -> logits ``[B, num_classes]`` (mean over time)."""
        functional.reset_net(self)
        x = images.unsqueeze(0).repeat(self.time_steps, 1, 1, 1, 1)
        x = self.stages(self.stem_pool(self.stem(x)))
        return self.head(x.flatten(3).mean(3)).mean(0)


def build_sj2_model(model: nn.Module) -> nn.Module:
    """The spikingjelly 2.x network with ``model``'s configuration and a copy of its weights.

    ``model`` is a spikezoo SDT (image input, LIF) or SpikingResformer (image input, LIF).
    """
    if isinstance(model, SpikeDrivenTransformer):
        attn = model.blocks[0].attn
        pooling = "".join(
            "0" if isinstance(p, nn.Identity) else "1" for p in model.patch_embed.pool
        )
        peer = SJ2SpikeDrivenTransformer(
            in_chans=model.patch_embed.proj[0].conv.in_channels,
            num_classes=model.head.out_features,
            dim=model.num_features,
            depth=len(model.blocks),
            heads=attn.num_heads,
            mlp_ratio=model.blocks[0].mlp.fc1.conv.out_channels / model.num_features,
            time_steps=model.time_steps,
            pooling=pooling,
        )
    elif isinstance(model, SpikingResformer):
        dssas = [[u for u in stage if u.__class__.__name__ == "DSSA"] for stage in model.stages]
        ffn = model.stages[0][-1]
        peer = SJ2SpikingResformer(
            in_chans=model.stem.conv.in_channels,
            num_classes=model.head.out_features,
            depths=[len(d) for d in dssas],
            dims=[d[0].dim for d in dssas],
            heads=[d[0].num_heads for d in dssas],
            patches=[d[0].patch_size for d in dssas],
            imagenet_stem=model.stem.conv.kernel_size[0] == 7,
            group_size=ffn.up.conv.out_channels // ffn.convs[0].conv.groups,
            time_steps=model.time_steps,
        )
    else:
        raise TypeError(
            "model must be a spikezoo SpikeDrivenTransformer or SpikingResformer, "
            f"got {type(model).__name__}"
        )
    reference = next(model.parameters())
    peer.to(device=reference.device, dtype=reference.dtype)
    peer.load_state_dict(model.state_dict())
    return peer
