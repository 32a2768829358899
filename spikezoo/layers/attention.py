"""The protocol of spiking attention layers: where their heads are and what their attention map is.

A layer that subclasses :class:`SpikingAttention` declares, next to its code, how to read it;
:mod:`spikezoo.analysis` (per-head firing rates, attention maps) reads only these declarations
and never names a layer class, so a new attention layer is analysed as soon as it is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal, get_args

from einops import rearrange
from torch import Tensor, nn

__all__ = ["HeadLayout", "SpikingAttention"]

#: Where the heads sit in an output: ``"channels"``: ``[T, B, heads * d, ...]`` (head-major
#: channels); ``"axis"``: ``[T, B, heads, ...]``.
HeadLayout = Literal["channels", "axis"]
_LAYOUTS = get_args(HeadLayout)


class SpikingAttention(nn.Module):
    """Base of the spiking self-attention layers: ``[T, B, C, H, W]`` -> same shape.

    A subclass sets ``self.num_heads`` in ``__init__`` and declares two class attributes:

    * ``head_layout``: for every neuron whose output is split into heads (its name relative to
      the layer), where the heads sit: ``"channels"`` for ``[T, B, heads * d, ...]``, ``"axis"``
      for ``[T, B, heads, ...]``. These neurons get per-head firing rates.
    * ``attention_map``: ``(name, dim)``: the leaf module (name relative to the layer) whose
      output is the attention map, and the dim of that output, with its heads on dim 2
      (:meth:`split_heads`), to average so that ``[T, B, heads, tokens...]`` remains, one value
      per token of the layer's ``H x W`` input grid. ``None`` where the layer has no map.

    A class that leaves out either declaration is refused when it is defined.

    Example:
        >>> import torch
        >>> from spikezoo.neurons import MultiStepLIF
        >>> class ChannelGate(SpikingAttention):
        ...     head_layout = {"gate_lif": "channels"}
        ...     attention_map = ("gate_lif", 3)  # [T, B, heads, d, H, W]: average d
        ...     def __init__(self, dim, num_heads):
        ...         super().__init__()
        ...         self.num_heads = num_heads
        ...         self.gate_lif = MultiStepLIF()
        ...     def forward(self, x):  # [T, B, dim, H, W]
        ...         return x * self.gate_lif(x)
        >>> gate = ChannelGate(8, num_heads=2)
        >>> gate.split_heads("gate_lif", torch.zeros(4, 1, 8, 3, 3)).shape
        torch.Size([4, 1, 2, 4, 3, 3])
        >>> gate.read_attention_map(torch.zeros(4, 1, 8, 3, 3)).shape
        torch.Size([4, 1, 2, 9])
    """

    num_heads: int
    #: neuron name relative to the layer -> where its output holds the heads
    head_layout: ClassVar[Mapping[str, HeadLayout]]
    #: (leaf module whose output is the attention map, dim of that output to average), or None
    attention_map: ClassVar[tuple[str, int] | None]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        _check_declarations(cls)

    def declared_submodule(self, name: str) -> nn.Module:
        """The submodule ``name`` that a declaration names; ``ValueError`` if there is none."""
        try:
            return self.get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"{type(self).__name__} declares the submodule {name!r} in head_layout or "
                f"attention_map, but has none of that name"
            ) from None

    def split_heads(self, name: str, output: Tensor) -> Tensor:
        """The output of the submodule ``name`` with its heads on dim 2: ``[T, B, heads, ...]``.

        A ``"channels"`` output ``[T, B, heads * d, ...]`` becomes ``[T, B, heads, d, ...]``; an
        ``"axis"`` output, or that of a module not in :attr:`head_layout`, is returned as it is.
        """
        if self.head_layout.get(name) == "channels":
            output = rearrange(output, "t b (heads d) ... -> t b heads d ...", heads=self.num_heads)
        if output.dim() < 3 or output.shape[2] != self.num_heads:
            raise ValueError(
                f"{type(self).__name__}.{name}: expected its {self.num_heads} heads on dim 2 "
                f"([T, B, heads, ...]), got an output of shape {tuple(output.shape)}"
            )
        return output

    def read_attention_map(self, output: Tensor) -> Tensor:
        """``[T, B, heads, N]``: the per-token map in the output of the :attr:`attention_map`
        module (the mean over its declared dim; ``N`` tokens in the input's ``H x W`` order)."""
        if self.attention_map is None:
            raise ValueError(f"{type(self).__name__} declares no attention map")
        name, dim = self.attention_map
        return self.split_heads(name, output).float().mean(dim).flatten(3)


def _check_declarations(cls: type) -> None:
    """Raise ``TypeError`` unless ``cls`` declares a valid ``head_layout`` and ``attention_map``."""
    missing = [attr for attr in ("head_layout", "attention_map") if not hasattr(cls, attr)]
    if missing:
        raise TypeError(
            f"{cls.__name__} subclasses SpikingAttention but does not declare {missing}: set "
            "head_layout = {neuron name: 'channels' | 'axis'} and attention_map = "
            "(leaf module name, dim) or None as class attributes"
        )
    layout = cls.head_layout
    if not isinstance(layout, Mapping) or not all(
        isinstance(name, str) and value in _LAYOUTS for name, value in layout.items()
    ):
        raise TypeError(
            f"{cls.__name__}.head_layout must map neuron names to one of {_LAYOUTS}, got {layout!r}"
        )
    attention_map = cls.attention_map
    if attention_map is not None and not (
        isinstance(attention_map, tuple)
        and len(attention_map) == 2
        and isinstance(attention_map[0], str)
        and isinstance(attention_map[1], int)
    ):
        raise TypeError(
            f"{cls.__name__}.attention_map must be None or a (module name, dim) tuple, "
            f"got {attention_map!r}"
        )
