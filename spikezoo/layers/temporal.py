"""Time-major plumbing shared by every layer: per-step modules, conv+BN, stochastic depth.

All tensors are time-major, ``[T, B, C, H, W]``. A per-frame module (convolution, BatchNorm,
pooling) runs on every time step at once by folding T into the batch: BatchNorm statistics are
therefore taken over ``T·B·H·W``, as in both papers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from einops import rearrange, reduce
from timm.layers import drop_path, register_notrace_function
from torch import Tensor, nn

from spikezoo._checks import fraction, positive_int
from spikezoo.layers.batch_norms import batch_norm
from spikezoo.layers.bn_neuron import batch_norm_fire
from spikezoo.layers.renamed_children import LoadsRenamedChildren

__all__ = [
    "ConvBN",
    "DropPath",
    "NeuronFactory",
    "PerStep",
    "check_tbchw",
    "is_time_constant",
    "per_step",
]


def is_time_constant(x: Tensor) -> bool:
    """Whether ``x [T, ...]`` is one step expanded over T > 1 (stride 0 along T): a static
    image that the model encodes once (see ``SpikingVisionModel.set_static_encoding``)."""
    return x.dim() > 1 and x.shape[0] > 1 and x.stride(0) == 0


# einops reads a tensor's shape, which a torch.fx proxy has not: timm's FX tracer (features_only
# with feature_cls="fx", create_feature_extractor) records these calls without tracing into them.
register_notrace_function(rearrange)
register_notrace_function(reduce)

#: Builds a multi-step neuron layer; layers call it with keyword overrides such as
#: ``v_threshold=0.5``. Any ``functools.partial`` of a spikezoo neuron class works.
NeuronFactory = Callable[..., nn.Module]


def per_step(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Apply a per-frame ``fn`` to ``x [T, B, ...]`` by folding T into the batch."""
    return fn(x.flatten(0, 1)).unflatten(0, x.shape[:2])


@register_notrace_function  # torch.fx cannot branch on the shape of its proxies
def check_tbchw(x: Tensor, channels: int, layer: str) -> None:
    """Raise ``ValueError`` unless ``x`` is ``[T, B, channels, H, W]``."""
    if x.dim() != 5:
        hint = " (a time axis T first is missing)" if x.dim() == 4 else ""
        raise ValueError(f"{layer} expects input [T, B, C, H, W], got shape {tuple(x.shape)}{hint}")
    if x.shape[2] != channels:
        raise ValueError(
            f"{layer} expects C={channels} channels, got {x.shape[2]} (shape {tuple(x.shape)})"
        )


class PerStep(nn.Module):
    """Wrap a per-frame module (e.g. ``nn.MaxPool2d``) to run over ``[T, B, ...]``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, ...]`` -> the wrapped module applied to every step, ``[T, B, ...]``."""
        return per_step(self.module, x)


class ConvBN(LoadsRenamedChildren):
    """Per-step ``Conv2d`` + ``BatchNorm2d``, optionally preceded by a spiking neuron.

    ``[T, B, in_chans, H, W]`` -> ``[T, B, out_chans, H', W']``. With ``neuron`` given, the
    input is a membrane potential that the neuron turns into spikes first (``self.neuron``;
    state dicts that still call it ``lif`` load too).

    Args:
        in_chans: input channels.
        out_chans: output channels.
        kernel_size: square kernel size.
        stride: convolution stride.
        padding: zero padding; defaults to ``kernel_size // 2``.
        groups: convolution groups; must divide both channel counts.
        bias: give the convolution a bias.
        neuron: factory of the neuron that fires before the convolution, or ``None``.
    """

    renamed_children: ClassVar[dict[str, str]] = {"lif": "neuron"}

    #: :meth:`conv_bn_fire` fuses BatchNorm with the neuron after it in training (see
    #: :mod:`spikezoo.layers.bn_neuron`); ``False`` runs them as two modules.
    fuse_bn_neuron: bool = True

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        bias: bool = False,
        neuron: NeuronFactory | None = None,
    ) -> None:
        super().__init__()
        self.in_chans = positive_int("in_chans", in_chans)
        positive_int("out_chans", out_chans)
        positive_int("kernel_size", kernel_size)
        positive_int("stride", stride)
        padding = kernel_size // 2 if padding is None else positive_int("padding", padding, 0)
        positive_int("groups", groups)
        self.neuron = neuron() if neuron is not None else None
        self.conv = nn.Conv2d(
            in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=bias
        )
        self.bn = nn.BatchNorm2d(out_chans)

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, in_chans, H, W]`` -> ``[T, B, out_chans, H', W']``."""
        check_tbchw(x, self.in_chans, type(self).__name__)
        if self.neuron is not None:
            x = self.neuron(x)
        return self.conv_bn(x)

    def conv_bn(self, x: Tensor) -> Tensor:
        """The layer after its neuron: ``x [T, B, in_chans, H, W]`` (its spikes) -> BN(conv(x))."""
        return per_step(self._conv_bn, x)

    def conv_bn_fire(
        self, x: Tensor, neuron: nn.Module, with_output: bool = False, fired: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``neuron(self(x))``: the spikes of the neuron that reads this layer's output.

        ``[T, B, in_chans, H, W]`` -> ``[T, B, out_chans, H', W']`` spikes; with
        ``with_output=True``, the pair ``(spikes, self(x))``, for a layer that also sums this
        layer's output. ``fired=True``: ``x`` is already the output of this layer's own neuron
        (the previous layer of a chain fired it, fused), which is then not run again. In
        training, the BatchNorm and ``neuron`` are fused
        (:func:`~spikezoo.layers.bn_neuron.batch_norm_fire`): only the convolution's output is
        kept for backward.
        """
        # torch.fx proxies and a static image (which the model encodes once, through this
        # layer's own forward) take the plain pair
        if not self.fuse_bn_neuron or not isinstance(x, Tensor) or is_time_constant(x):
            out = self.conv_bn(x) if fired else self(x)
            return (neuron(out), out) if with_output else neuron(out)
        check_tbchw(x, self.in_chans, type(self).__name__)
        if self.neuron is not None and not fired:
            x = self.neuron(x)
        return batch_norm_fire(per_step(self.conv, x), self.bn, neuron, with_output)

    def _conv_bn(self, x: Tensor) -> Tensor:
        return batch_norm(self.bn, self.conv(x))


class DropPath(nn.Module):
    """Stochastic depth for ``[T, B, ...]``: drops a sample's residual branch at every step.

    Args:
        drop_prob: probability of dropping a sample's branch in training, in ``[0, 1)``.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = fraction("drop_prob", drop_prob, upper_closed=False)

    def forward(self, x: Tensor) -> Tensor:
        """``x [T, B, ...]`` with whole samples' branches dropped (training) or unchanged."""
        if self.drop_prob == 0.0 or not self.training:
            return x
        return drop_path(x.transpose(0, 1), self.drop_prob, self.training).transpose(0, 1)

    def extra_repr(self) -> str:
        """The drop probability, for ``print(module)``."""
        return f"drop_prob={self.drop_prob}"
