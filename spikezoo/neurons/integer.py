"""Integer spiking neurons: one step fires 0..D spikes at once (E-SpikeFormer, Yao et al. 2025).

:class:`IntegerNeuron` turns its input into ``round(clamp(x, 0, D)) / norm``: an integer spike
count ``n`` in ``0..D``, scaled. On hardware, ``n`` is fired as ``n`` binary spikes over ``D``
virtual time steps (:func:`spikezoo.deploy.expand_to_binary` does so exactly).

:class:`IntegerSpikes` is a neuron's output that remembers its scale: analysis and the binary
expansion ask an integer neuron to tag its output (:meth:`IntegerNeuron.tag`), and reshapes,
permutations and indexing keep the tag, so a layer several reshapes downstream still knows that
its input holds spike counts, and which.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import register_notrace_module
from torch import Tensor

from spikezoo import _checks
from spikezoo.neurons import integer_fire
from spikezoo.neurons.backends.native import Normalisation
from spikezoo.neurons.base import SpikingNeuron
from spikezoo.neurons.integer_fire import GRADIENT_WINDOWS, ROUNDINGS
from spikezoo.neurons.saved_spikes import compacting, mark_integer_spikes

__all__ = ["GRADIENT_WINDOWS", "ROUNDINGS", "IntegerNeuron", "IntegerSpikes", "integer_spike"]


def _fire(
    x: Tensor, levels: int, norm: float, rounding: str, window: str, with_mask: bool
) -> tuple[Tensor, Tensor | None]:
    """``(spikes, inside)``: :func:`~spikezoo.neurons.integer_fire.fire` of ``x``. Inside
    :func:`~spikezoo.neurons.compact_saved_spikes` the counts are kept as ``uint8`` and the
    spikes marked, so that what saves them for backward keeps one byte per value."""
    with_counts = levels <= 255 and compacting()
    spikes, inside, counts = integer_fire.fire(
        x, levels, norm, rounding, window, with_mask, with_counts
    )
    if counts is not None:
        mark_integer_spikes(spikes, counts, norm)
    return spikes, inside


class _IntegerSpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, levels: int, norm: float, rounding: str, window: str):
        spikes, inside = _fire(x, levels, norm, rounding, window, with_mask=True)
        ctx.save_for_backward(inside)
        ctx.norm = norm
        return spikes

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (inside,) = ctx.saved_tensors
        return integer_fire.backward(grad, inside, ctx.norm), None, None, None, None


def integer_spike(
    x: Tensor, levels: int, norm: float, rounding: str = "half_even", window: str = "closed"
) -> Tensor:
    """``round(clamp(x, 0, levels)) / norm``, elementwise, any shape.

    The gradient is straight-through (``1 / norm``) inside the window (:data:`GRADIENT_WINDOWS`)
    and 0 outside it. Arguments are not checked here; :class:`IntegerNeuron` checks them.
    Without a gradient to compute, no window is computed either. Contiguous float32 CPU
    tensors take a C kernel that computes the same bits in one pass
    (:mod:`spikezoo.neurons.integer_fire`).
    """
    if not (torch.is_grad_enabled() and x.requires_grad):
        return _fire(x, levels, norm, rounding, window, with_mask=False)[0]
    return _IntegerSpike.apply(x, levels, norm, rounding, window)


@register_notrace_module  # torch.fx keeps the neuron whole: it calls an autograd Function
class IntegerNeuron(SpikingNeuron):
    """Integer spiking neuron: ``x`` -> ``round(clamp(x, 0, levels)) / norm``, same shape.

    Stateless and elementwise: it has no time axis of its own, so it takes ``[T, B, ...]``
    (or any) input and fits the layers' ``neuron`` factories like the multi-step neurons.
    The value ``n / norm`` stands for ``n`` binary spikes (:meth:`spike_counts`); with
    ``norm = 1`` the output is the count itself (E-SpikeFormer's classifier input).

    Args:
        levels: ``D``, the most spikes one step fires (E-SpikeFormer: 4 or 8).
        norm: the divisor of the count; ``None`` takes ``levels`` (outputs in ``[0, 1]``).
        rounding: ``"half_even"`` (``torch.round``, the base models) or ``"half_up"``
            (``floor(x + 0.5)``, the large models); see :data:`ROUNDINGS`.
        gradient_window: where the straight-through gradient passes: ``"closed"``
            (``0 <= x <= levels``, the base models) or ``"open"`` (``0 < x < levels``, the large
            models).

    Raises ``ValueError`` for ``levels < 1``, ``norm <= 0`` or an unknown name.

    Example:
        >>> import torch
        >>> IntegerNeuron(levels=4)(torch.tensor([-1.0, 0.5, 1.5, 2.6, 9.0])).tolist()
        [0.0, 0.0, 0.5, 0.75, 1.0]
        >>> IntegerNeuron(levels=4, norm=1, rounding="half_up")(torch.tensor([0.5, 2.5])).tolist()
        [1.0, 3.0]
    """

    #: its one-byte mask is all it keeps: a fused BatchNorm would recompute more than it saves
    fuse_with_batch_norm = False

    def __init__(
        self,
        levels: int = 4,
        norm: float | None = None,
        rounding: str = "half_even",
        gradient_window: str = "closed",
    ) -> None:
        super().__init__()
        self.levels = _checks.positive_int("levels", levels)
        self.norm = float(self.levels) if norm is None else _checks.positive_real("norm", norm)
        self.rounding = _checks.choice("rounding", rounding, ROUNDINGS)
        self.gradient_window = _checks.choice("gradient_window", gradient_window, GRADIENT_WINDOWS)

    def forward(self, x: Tensor) -> Tensor:
        """``x [...]`` -> spikes ``[...]`` with values ``n / norm``, ``n`` in ``0..levels``."""
        return integer_spike(x, self.levels, self.norm, self.rounding, self.gradient_window)

    def reads_normalisation(self, x: Tensor) -> bool:
        """Whether this neuron can read ``x [T, B, C, ...]`` through a BatchNorm's map in
        evaluation (:func:`~spikezoo.neurons.integer_fire.reads_normalisation`), as
        :func:`spikezoo.layers.batch_norm_fire` asks it to."""
        return integer_fire.reads_normalisation(x)

    def forward_normalised(self, x: Tensor, normalisation: Normalisation) -> Tensor | None:
        """``self(bn(x))`` in inference for the BatchNorm that ``normalisation`` describes,
        without writing ``bn(x)``; ``None`` (nothing run) where the kernel cannot
        (:func:`~spikezoo.neurons.integer_fire.fire_normalised`). Forward hooks do not run."""
        return integer_fire.fire_normalised(x, normalisation, self.levels, self.norm, self.rounding)

    def spike_counts(self, spikes: Tensor) -> Tensor:
        """The integer count ``n`` behind each output value ``n / norm``."""
        return torch.round(spikes.as_subclass(Tensor) * self.norm)

    def tag(self, spikes: Tensor) -> IntegerSpikes:
        """This neuron's output ``spikes`` as :class:`IntegerSpikes` (same values)."""
        return IntegerSpikes.wrap(spikes, self.levels, self.norm)

    def extra_repr(self) -> str:
        return (
            f"levels={self.levels}, norm={self.norm:g}, rounding={self.rounding}, "
            f"gradient_window={self.gradient_window}"
        )


def _structural_ops() -> frozenset:
    methods = [
        "view",
        "reshape",
        "permute",
        "transpose",
        "flatten",
        "unflatten",
        "contiguous",
        "expand",
        "expand_as",
        "unsqueeze",
        "squeeze",
        "clone",
        "detach",
        "__getitem__",
        "chunk",
        "split",
        "unbind",
        "movedim",
    ]
    functions = "reshape permute transpose flatten unflatten unsqueeze squeeze chunk split unbind"
    ops = {getattr(Tensor, name) for name in methods}
    ops |= {getattr(torch, name) for name in functions.split()}
    ops |= {Tensor.mT.__get__, Tensor.T.__get__}
    return frozenset(ops)


class IntegerSpikes(Tensor):
    """An integer neuron's output (values ``n / norm``) that remembers ``levels`` and ``norm``.

    Ops that only move values (reshape, permute, transpose, flatten, indexing, ...) return
    :class:`IntegerSpikes` again; every other op returns a plain tensor. The values are those of
    the plain tensor, so a model computes exactly the same on either.
    """

    levels: int
    norm: float

    @classmethod
    def wrap(cls, spikes: Tensor, levels: int, norm: float) -> IntegerSpikes:
        """``spikes`` (a tensor of values ``n / norm``) tagged with ``levels`` and ``norm``;
        a tensor tagged already is returned as it is."""
        if isinstance(spikes, IntegerSpikes):
            return spikes
        tagged = spikes.as_subclass(cls)
        tagged.levels, tagged.norm = levels, norm
        return tagged

    def counts(self) -> Tensor:
        """The integer counts ``n`` (a plain tensor)."""
        return torch.round(self.as_subclass(Tensor) * self.norm)

    def planes(self) -> Tensor:
        """The counts as ``levels`` binary planes ``[levels, ...]``: plane ``d`` is ``n > d``,
        so the planes sum to ``n`` (the ``levels`` virtual time steps of a binary chip)."""
        counts = self.counts()
        steps = torch.arange(self.levels, device=counts.device, dtype=counts.dtype)
        return (counts.unsqueeze(0) > steps.view(-1, *[1] * counts.dim())).to(counts.dtype)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        with torch._C.DisableTorchFunctionSubclass():
            result = func(*args, **(kwargs or {}))
        source = args[0] if args and isinstance(args[0], IntegerSpikes) else None
        if source is None or func not in _STRUCTURAL_OPS:
            return _plain(result)
        return _retag(result, source)

    def __repr__(self) -> str:
        plain = self.as_subclass(Tensor)
        return f"IntegerSpikes(levels={self.levels}, norm={self.norm:g}, {plain!r})"


_STRUCTURAL_OPS = _structural_ops()


def _plain(result: Any) -> Any:
    if isinstance(result, IntegerSpikes):
        return result.as_subclass(Tensor)
    if isinstance(result, (tuple, list)):
        return type(result)(_plain(item) for item in result)
    return result


def _retag(result: Any, source: IntegerSpikes) -> Any:
    """``result`` tagged like ``source`` (with its class)."""
    if isinstance(result, Tensor):
        return type(source).wrap(result.as_subclass(Tensor), source.levels, source.norm)
    if isinstance(result, (tuple, list)):
        return type(result)(_retag(item, source) for item in result)
    return result
