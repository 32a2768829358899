"""Binary expansion: run a model of integer spikes as binary spikes over D virtual time steps.

An integer neuron (:class:`~spikezoo.neurons.IntegerNeuron`) fires ``n`` in ``0..D`` spikes in
one step, and the next layer reads ``n / norm``. A neuromorphic chip fires binary spikes only:
``n`` becomes ``D`` binary *virtual* steps ``b_1..b_D`` with ``b_d = [n >= d]``, and since
``n = b_1 + ... + b_D``, every layer that is linear in its spike input gives the same result on
the virtual steps, summed, as on the integer spikes (E-SpikeFormer's "spike-driven inference").

:func:`expand_to_binary` builds that network from any model made of integer neurons: each layer
that reads spikes (convolutions, linear layers and the spike products of
:mod:`spikezoo.layers.spike_products`) is wrapped in :class:`VirtualSteps`, which feeds the
layer its input's binary steps one by one and sums the results:

* an affine layer ``f(s) = W s + b`` (convolution, linear) gives
  ``f(0) + sum_d (f(b_d) - f(0)) / norm``: the bias counts once, not ``D`` times;
* a product of two integer spike tensors (``q @ k^T``) runs over every pair of virtual steps,
  ``sum_{d, e} f(b_d, c_e) / (norm_q norm_k)``, as two binary spike trains multiply on a chip.

The logits are those of the integer model to rounding (float64: within 1e-9), and the layers
see binary spikes only: :class:`~spikezoo.analysis.OpCounter` and ``spikezoo profile`` count
their synaptic operations as on binary spiking models, which is the integer counter's figure
(an integer spike ``n`` counts as ``n`` operations per synapse).
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

import torch
from torch import Tensor, nn

from spikezoo.layers.spike_products import SpikingHadamard, SpikingMatmul, SpikingSum
from spikezoo.neurons import IntegerNeuron, IntegerSpikes

__all__ = ["EXPANDED_LAYERS", "BinaryOnlySpikes", "VirtualSteps", "expand_to_binary"]

#: The layers that read spikes, by how their output depends on a spike input: ``"affine"``
#: (one input, ``f(0)`` may be a bias) or ``"multilinear"`` (every input, ``f`` is 0 when one
#: input is 0).
EXPANDED_LAYERS: dict[type[nn.Module], str] = {
    nn.modules.conv._ConvNd: "affine",
    nn.Linear: "affine",
    SpikingMatmul: "multilinear",
    SpikingHadamard: "multilinear",
    SpikingSum: "multilinear",
}

_ALWAYS_ALLOWED = frozenset({Tensor.as_subclass, Tensor.__repr__})


class BinaryOnlySpikes(IntegerSpikes):
    """The integer spikes of an expanded model: any computation on them other than moving
    values raises, so that no layer reads an integer spike without expanding it.

    Reading metadata (shape, dtype, device) is allowed.
    """

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        result = super().__torch_function__(func, types, args, kwargs)
        if isinstance(result, BinaryOnlySpikes) or func in _ALWAYS_ALLOWED:
            return result
        if _holds_tensor(result):
            name = getattr(func, "__name__", repr(func))
            raise TypeError(
                f"integer spikes reached {name} outside a layer that expand_to_binary expands "
                f"({', '.join(t.__name__ for t in EXPANDED_LAYERS)}): the binary expansion "
                "needs every layer that reads spikes to be linear in them"
            )
        return result


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, Tensor):
        return True
    return isinstance(value, (tuple, list)) and any(_holds_tensor(item) for item in value)


class VirtualSteps(nn.Module):
    """A spike-reading layer run on the binary virtual steps of its integer spike inputs.

    Inputs that are not integer spikes pass as they are; without integer spike inputs the
    layer runs once, unchanged. The wrapped layer (``self.layer``) is called once per virtual
    step (per pair of steps for a product of two spike tensors), so its forward hooks see
    binary spikes only. See :mod:`spikezoo.deploy.binary` for the arithmetic.

    Args:
        layer: the wrapped layer.
        kind: ``"affine"`` or ``"multilinear"`` (:data:`EXPANDED_LAYERS`).
    """

    def __init__(self, layer: nn.Module, kind: str) -> None:
        super().__init__()
        if kind not in ("affine", "multilinear"):
            raise ValueError(f"kind must be 'affine' or 'multilinear', got {kind!r}")
        self.layer = layer
        self.kind = kind

    def forward(self, *inputs: Tensor) -> Tensor:
        """The layer's output on ``inputs``, computed from binary virtual steps."""
        spiking = [i for i, x in enumerate(inputs) if isinstance(x, IntegerSpikes)]
        if not spiking:
            return self.layer(*inputs)
        plain = [x.as_subclass(Tensor) if isinstance(x, IntegerSpikes) else x for x in inputs]
        if self.kind == "affine":
            if len(inputs) != 1:
                raise ValueError(
                    f"an affine layer takes one input, {type(self.layer).__name__} got "
                    f"{len(inputs)}"
                )
            (spikes,) = inputs
            # f(0) without the hooks: the bias (and nothing else) of an affine layer
            offset = self.layer.forward(torch.zeros_like(plain[0]))
            steps = sum(self.layer(step) - offset for step in spikes.planes())
            return offset + steps / spikes.norm
        planes = [inputs[i].planes() for i in spiking]
        scale = math.prod(inputs[i].norm for i in spiking)
        total = 0
        for steps in itertools.product(*planes):
            args = list(plain)
            for i, step in zip(spiking, steps, strict=True):
                args[i] = step
            total = total + self.layer(*args)
        return total / scale

    def extra_repr(self) -> str:
        return f"kind={self.kind}"


def expand_to_binary(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that runs its integer spikes as binary spikes over virtual steps.

    Every integer neuron of the copy tags its output (:class:`BinaryOnlySpikes`), and every
    layer of a type in :data:`EXPANDED_LAYERS` is wrapped in :class:`VirtualSteps` (so its
    parameters are found under ``<name>.layer.``). ``model`` itself is left unchanged. Any other
    computation on integer spikes raises ``TypeError`` when the copy runs.

    Raises ``ValueError`` for a model without integer neurons and ``TypeError`` for something
    other than an ``nn.Module``.

    Example:
        >>> import timm, torch, spikezoo
        >>> from spikezoo.deploy import expand_to_binary
        >>> model = timm.create_model(
        ...     "sdt_v3_t", embed_dim=(8, 16, 32, 40), num_heads=2, img_size=32, num_classes=10
        ... ).double().eval()
        >>> binary = expand_to_binary(model)
        >>> x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
        >>> torch.allclose(binary(x), model(x), rtol=0, atol=1e-9)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not any(isinstance(m, IntegerNeuron) for m in model.modules()):
        raise ValueError(
            f"{type(model).__name__} has no integer neurons (spikezoo.neurons.IntegerNeuron): "
            "there are no integer spikes to expand"
        )
    expanded = copy.deepcopy(model)
    for module in expanded.modules():
        if isinstance(module, IntegerNeuron):
            module.register_forward_hook(_tag_for_expansion)
    for parent in list(expanded.modules()):
        for name, child in list(parent.named_children()):
            kind = _kind(child)
            if kind is not None and not isinstance(parent, VirtualSteps):
                setattr(parent, name, VirtualSteps(child, kind))
    return expanded


def _kind(module: nn.Module) -> str | None:
    for layer_type, kind in EXPANDED_LAYERS.items():
        if isinstance(module, layer_type):
            return kind
    return None


def _tag_for_expansion(neuron: IntegerNeuron, inputs: tuple, output: Tensor) -> Tensor:
    return BinaryOnlySpikes.wrap(output, neuron.levels, neuron.norm)
