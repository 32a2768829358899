"""Residual sums of BatchNorm outputs, recomputed in backward instead of kept.

In a residual block, the neuron after a sum ``s = x + bn(y)`` keeps ``s`` for backward (the
multi-step neurons keep their input), while BatchNorm keeps its input ``y`` and the layer that
reads ``x`` keeps ``x``: ``s`` is a third tensor the size of the activation, and the other two
determine it. Inside :class:`~spikezoo.neurons.compact_saved_spikes` (the models' training
forward pass), :func:`residual_sum` keeps a saved ``s`` as that computation (a
:class:`~spikezoo.neurons.Recomputed`) when it is a plain ``+`` (``alpha = 1``, no
broadcasting, one dtype; reshapes allowed around it) of two summands that are each

* the output of a training-mode BatchNorm (``F.batch_norm`` with batch statistics and a
  trainable weight and bias, so that its autograd node leads to both, or
  :func:`~spikezoo.layers.batch_norm`), recomputed from the input and statistics its node
  saved;
* the normalised output of a fused BatchNorm + neuron pair (``batch_norm_fire(...,
  with_normalised=True)``, SpikingResformer's GWSFFN), recomputed from the pair's input and
  statistics;
* or a tensor that another operation saved unchanged (the residual stream, which the neuron
  reading it keeps).

The BatchNorm outputs are recomputed as the CPU kernel's affine map, where that map reproduces
the kernel bit for bit (checked once per kind of input, as the fused pair's backward does), so
the sum is the forward's bit for bit. Only in the CPU's memory: on CUDA, cuDNN's normalisation
cannot be checked against the map, and those sums are kept. The cost is one elementwise pass
per BatchNorm summand and one for the sum, in backward (1-3 % of a CPU training step of the
models, measured); a summand modified in place after the forward pass raises autograd's error
when backward needs the sum. A summand that is itself a recomputed sum is not used (no chains
of recomputation): along a residual stream every other sum is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from spikezoo.layers.batch_norms import (
    _affine_normalisation,
    _affine_reproduces_kernel,
    _input_kind,
    _TrainingBatchNorm,
)
from spikezoo.layers.bn_neuron import _BatchNormFire
from spikezoo.neurons.saved_spikes import (
    KeptTensor,
    Recomputed,
    _Unchanged,
    register_recipe,
    reshaped_from,
)

__all__ = ["residual_sum"]


@dataclass(frozen=True)
class _Summand:
    """One term of a sum: ``compute()`` gives its values (row-major order, any shape), in a
    tensor of its own where ``fresh`` (the sum may then be written into it)."""

    compute: Callable[[], Tensor]
    numel: int
    dtype: torch.dtype
    fresh: bool


def _unmodified(*tensors: Tensor | None) -> Callable[[], None]:
    """A check that raises autograd's in-place error if one of ``tensors`` changed since."""
    held = [_Unchanged(t, t._version) for t in tensors if t is not None]

    def check() -> None:
        for record in held:
            record.unpack()

    return check


def _saved_input(node: torch.autograd.graph.Node, kept: KeptTensor, unpack) -> Tensor | None:
    """``unpack()``, the input that ``node`` saved, if that is a tensor kept unchanged in this
    block (not a copy expanded from bits). Looked up first: a node whose input was never saved
    here ran in a region that saves its own way (``torch.utils.checkpoint``), where reading a
    saved tensor would recompute the region."""
    edge = node.next_functions[0]
    saved = None if edge[0] is None else kept(*reshaped_from(*edge))
    if saved is None:
        return None
    tensor = unpack()
    return tensor if _layout(tensor) == _layout(saved) else None


def _row_major_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def _layout(t: Tensor) -> tuple:
    return t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.stride(), t.dtype


def _normalised(
    frames: Tensor, weight: Tensor | None, bias: Tensor | None, mean: Tensor, invstd: Tensor
) -> _Summand | None:
    """BatchNorm's training output for ``frames [N, C, ...]``, where the kernel's affine map
    reproduces it."""
    if frames.device.type != "cpu" or not _affine_reproduces_kernel(
        *_input_kind(frames, weight, bias)
    ):
        return None
    check = _unmodified(frames, weight, bias)

    def compute() -> Tensor:
        check()
        return _affine_normalisation(frames, weight, bias, mean, invstd)

    return _Summand(compute, frames.numel(), frames.dtype, fresh=True)


def _batch_norm_output(node: torch.autograd.graph.Node, kept: KeptTensor) -> _Summand | None:
    """The output of ``NativeBatchNormBackward0`` ``node``, if recomputable."""
    weight_node, bias_node = (node.next_functions[i][0] for i in (1, 2))
    # a frozen or absent bias leaves no edge: only trainable parameters are known for sure
    if not node._saved_training or not all(
        type(n).__name__ == "AccumulateGrad" for n in (weight_node, bias_node)
    ):
        return None
    frames = _saved_input(node, kept, lambda: node._saved_input)
    if frames is None:
        return None
    mean, invstd = node._saved_result1, node._saved_result2
    return _normalised(frames, weight_node.variable, bias_node.variable, mean, invstd)


def _function_normalised(
    ctx: torch.autograd.graph.Node, kept: KeptTensor, frames: Callable[[Tensor], Tensor]
) -> _Summand | None:
    """The normalised output of spikezoo's BatchNorm (its ``ctx``, the node of
    :func:`~spikezoo.layers.batch_norm` or of a fused BatchNorm + neuron pair), if
    recomputable: where its forward kept the batch statistics. ``frames`` turns the input it
    saved into BatchNorm's ``[N, C, ...]``."""
    if ctx.statistics is None:
        return None
    saved = _saved_input(ctx, kept, lambda: ctx.saved_tensors[0])
    if saved is None:
        return None
    mean, invstd, _, _ = ctx.statistics
    return _normalised(frames(saved), ctx.bn.weight, ctx.bn.bias, mean, invstd)


def _summand(
    node: torch.autograd.graph.Node | None, output_nr: int, kept: KeptTensor
) -> _Summand | None:
    """The term of a sum whose autograd edge is ``(node, output_nr)``, if kept or recomputable."""
    node, output_nr = reshaped_from(node, output_nr)
    if node is None:
        return None
    tensor = kept(node, output_nr)
    if tensor is not None:
        unchanged = _Unchanged(tensor, tensor._version)
        return _Summand(unchanged.unpack, tensor.numel(), tensor.dtype, fresh=False)
    if type(node).__name__ == "NativeBatchNormBackward0" and output_nr == 0:
        return _batch_norm_output(node, kept)
    if isinstance(node, _TrainingBatchNorm._backward_cls) and output_nr == 0:
        return _function_normalised(node, kept, lambda frames: frames)
    if isinstance(node, _BatchNormFire._backward_cls) and output_nr == 1:
        return _function_normalised(node, kept, lambda y: y.flatten(0, 1))
    return None


def residual_sum(x: Tensor, kept: KeptTensor) -> Recomputed | None:
    """``x`` kept as the sum that made it, where it is one of BatchNorm outputs and kept
    tensors (see the module docstring), else ``None``: a recipe of
    :func:`~spikezoo.neurons.saved_spikes.register_recipe`."""
    node, _ = reshaped_from(x.grad_fn, x.output_nr)
    if type(node).__name__ != "AddBackward0" or node._saved_alpha != 1:
        return None
    if x.stride() != _row_major_strides(x.shape):  # the strides the recomputed sum will have
        return None
    summands = [_summand(*edge, kept) for edge in node.next_functions]
    if any(s is None or s.numel != x.numel() or s.dtype != x.dtype for s in summands):
        return None
    # addition commutes exactly: the sum is written into a recomputed BatchNorm output
    first, second = sorted(summands, key=lambda s: not s.fresh)
    shape = x.shape

    def compute() -> Tensor:
        a, b = first.compute().reshape(-1), second.compute().reshape(-1)
        # row-major views of both (a reshape of a fresh channels-last output is a copy)
        return (a.add_(b) if first.fresh else torch.add(a, b)).view(shape)

    return Recomputed(compute)


register_recipe(residual_sum)
