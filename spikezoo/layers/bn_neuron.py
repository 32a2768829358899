"""BatchNorm and the spiking neuron after it, fused in training so that the pair saves one tensor.

A training step keeps, for each BatchNorm followed by a neuron, two tensors the size of the
activation: BatchNorm's input (the convolution's output ``y``) and the neuron's charged
membranes. :func:`batch_norm_fire` keeps ``y`` alone; the backward pass recomputes the
normalised input and the membranes from it, then back-propagates through both (the recomputed
spikes are freed first, so backward holds about what the unfused pair's holds). The forward
pass computes what the unfused pair computes, with the same kernels (so the spikes and
BatchNorm's running statistics are identical), and the gradients are those of the unfused pair
up to floating-point rounding (the recomputed BatchNorm uses the batch statistics, exactly as
in training). Only ``nn.BatchNorm1d`` and ``nn.BatchNorm2d`` themselves fuse: the backward
recomputes what they compute, which a subclass (``SyncBatchNorm``) may not.

On the CPU, where the pair's BatchNorm is a plain ``nn.BatchNorm1d``/``nn.BatchNorm2d`` without
hooks, the forward pass computes it itself (with spikezoo's statistics kernel where
:mod:`spikezoo.layers.batch_norms` takes the input, else PyTorch's kernel) and keeps the batch
mean and inverse standard deviation (two ``[C]`` tensors), and the backward pass recomputes the
normalised input as the kernel's own affine map of ``y`` (``_affine_normalisation``), a single
elementwise pass, instead of running the kernel again with its statistics pass: 0.28 against
1.1 ms on ``[1, 384, 56, 56]`` float32 (2 cores). That map is checked once per kind of input
against the kernel, bit for bit (``_affine_reproduces_kernel``); where it differs the kernel
runs again.

Where the neuron runs on the C loops (backend ``"native"``, a contiguous float32 CPU input),
BatchNorm's output is not written at all where nothing else reads it: the neuron reads ``y``
through BatchNorm's per-channel affine map
(:class:`~spikezoo.neurons.backends.native.Normalisation`): in evaluation (the running
statistics, no gradient asked for), in the fused training forward (the batch statistics, from
spikezoo's statistics kernel) and in the backward pass's recharge, which then gives the
gradient of the normalised input directly. The map computes BatchNorm's output bit for bit:
it is checked once per process against PyTorch's kernel on a probe, in each mode
(:func:`_map_reproduces_kernel`), and where it differs the pair runs as before.
``[4, 1, 384, 14, 14]`` in evaluation (2 threads): 0.20 ms for the pair, 0.07 ms read through
the map, 0.06 ms for the neuron alone.

spikezoo's layers fuse every BatchNorm that feeds a neuron directly (``ConvBN.conv_bn_fire``,
and ``SpikingTokenMLP`` for its ``BatchNorm1d``);
:func:`set_bn_neuron_fusion` switches it off and on for a whole model, e.g. to compare.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge

from spikezoo import _checks
from spikezoo.layers.batch_norms import (
    _FUSABLE_BATCH_NORMS,
    _affine_normalisation,
    _affine_reproduces_kernel,
    _backward_hooked,
    _forward_calls_the_kernel,
    _input_kind,
    _kernel,
    _laid_out_for_kernel,
    _statistics_kernel_applies,
    _training_batch_norm,
    _training_batch_norm_by_statistics_kernel,
    batch_norm,
)
from spikezoo.neurons.backends import native
from spikezoo.neurons.functional import neuron_config

__all__ = ["batch_norm_fire", "set_bn_neuron_fusion"]


def _batch_norm(y: Tensor, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> Tensor:
    """``bn`` over ``y [T, B, C, ...]`` with T folded into the batch (as ``per_step``)."""
    return batch_norm(bn, y.flatten(0, 1)).unflatten(0, y.shape[:2])


def _normalise(y: Tensor, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> Tensor:
    """``y [T, B, C, ...]`` normalised with its batch statistics, running statistics untouched."""
    frames = F.batch_norm(y.flatten(0, 1), None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    return frames.unflatten(0, y.shape[:2])


def _normalisation(
    y: Tensor, bn: nn.BatchNorm1d | nn.BatchNorm2d, mean: Tensor, invstd: Tensor
) -> native.Normalisation | None:
    """BatchNorm's map of ``y [T, B, C, ...]`` with the statistics ``mean`` and ``invstd``
    (``[C]``) for a neuron to read, where the C kernels apply to its layout (else ``None``)."""
    params = [None if p is None else p.detach() for p in (bn.weight, bn.bias)]
    kernels = _kernel()
    if kernels is None or not _laid_out_for_kernel(y.flatten(0, 1), *params, mean, invstd):
        return None
    inner = math.prod(y.shape[3:])
    return native.Normalisation(*params, mean, invstd, inner, kernels.contract)


def _running_statistics(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """``(mean, invstd)`` with which BatchNorm's CPU kernel normalises in evaluation (its
    inverse standard deviation rounds as ``rsqrt``, which :func:`_map_reproduces_kernel`
    checks)."""
    return bn.running_mean, torch.rsqrt(bn.running_var + bn.eps)


@functools.cache
def _map_reproduces_kernel(training: bool) -> bool:
    """Whether a neuron that reads its input through :func:`_normalisation` reads BatchNorm's
    output bit for bit, in training (the batch statistics of spikezoo's kernel) or in
    evaluation (:func:`_running_statistics`), tried once per process on a probe: 19 channels
    of values spread over six decades, 35 values per channel (the kernel's vector loop and its
    remainder), with and without the affine parameters, as ``[T, B, C, N]`` and
    ``[T, B, C, H, W]``. The neuron is an IF neuron that never fires, for one step from rest:
    its charged membrane is what it read."""
    if _kernel() is None or not native.runs(_NEVER_FIRES):
        return False
    generator = torch.Generator().manual_seed(0)
    for shape in [(3, 19, 35), (2, 19, 5, 7)]:
        per_channel = (1, -1, *[1] * (len(shape) - 2))
        scales = torch.logspace(-3, 3, 19).view(per_channel)
        frames = torch.randn(shape, generator=generator) * scales + 0.5
        for affine in (True, False):
            bn = nn.BatchNorm2d(19) if len(shape) == 4 else nn.BatchNorm1d(19)
            bn.running_mean.normal_(generator=generator)
            bn.running_var.uniform_(0.01, 100.0, generator=generator)
            if affine:
                nn.init.normal_(bn.weight, generator=generator)
                nn.init.normal_(bn.bias, generator=generator)
            else:
                bn.weight = bn.bias = None
            with torch.no_grad():
                if training:
                    expected, mean, invstd, _, _ = _training_batch_norm_by_statistics_kernel(
                        frames, bn.train()
                    )
                else:
                    expected, (mean, invstd) = bn.eval()(frames), _running_statistics(bn)
                y = frames.unsqueeze(0)
                normalisation = _normalisation(y, bn, mean, invstd)
                if normalisation is None:
                    return False
                _, read, _ = native.forward(
                    y.reshape(1, -1), torch.zeros(()), torch.zeros(()), _NEVER_FIRES, True,
                    False, normalisation,
                )  # fmt: skip
            if not torch.equal(read.view(shape), expected):
                return False
    return True


#: An IF neuron with soft reset that never fires (:func:`_map_reproduces_kernel`'s probe).
_NEVER_FIRES = neuron_config(
    leaky=False, decay_input=True, v_threshold=3.0e38, v_reset=None, surrogate="atan",
    alpha=None, detach_reset=True,
)  # fmt: skip


def _may_read_through(y: Tensor, bn: nn.Module, neuron: nn.Module) -> bool:
    """Whether ``neuron`` may read ``y`` through ``bn``'s map in place of ``neuron(bn(y))``: it
    has the methods (checked first: the integer neurons have not), ``y`` is on the CPU, and
    neither module has hooks to run (whether its backend reads this input so, the neuron
    says)."""
    return (
        callable(getattr(neuron, "forward_normalised", None))
        and callable(getattr(neuron, "reads_normalisation", None))
        and _forward_calls_the_kernel(y, bn)
        and not (neuron._forward_hooks or neuron._forward_pre_hooks)
    )


#: The fewest values of ``y`` for which evaluation reads it through BatchNorm's map: below, the
#: Python that sets the map up costs what the pass it saves would. One pair in evaluation, 2
#: threads, against ``neuron(bn(y))`` (2026-12-06): LIF ``[1, 1, 256, 8, 8]`` (16k values)
#: 0.71x the speed, ``[1, 1, 64, 32, 32]`` (66k) 1.01x, ``[1, 1, 128, 32, 32]`` (131k) 1.05x,
#: ``[4, 1, 128, 32, 32]`` (524k) 1.34x; the integer neuron 0.80x, 0.77x, 1.09x and 1.53x.
MAP_FROM_VALUES = 1 << 17


def _fire_in_evaluation(y: Tensor, bn: nn.Module, neuron: nn.Module) -> Tensor | None:
    """``neuron(bn(y))`` for ``bn`` in evaluation without a gradient, the neuron reading ``y``
    through BatchNorm's map, where it can and ``y`` holds :data:`MAP_FROM_VALUES` values or
    more (else ``None``, nothing run). The cheapest and most telling checks first: a small
    input, a neuron without the map and a compiled or traced graph (which the C loops would
    break, or leave out) cost one check each."""
    if (
        y.numel() < MAP_FROM_VALUES
        or not _may_read_through(y, bn, neuron)
        or torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or bn.training
        or bn.running_mean is None
        or not (y.dtype == torch.float32 and y.is_contiguous())
        or (
            torch.is_grad_enabled()
            and (y.requires_grad or any(p.requires_grad for p in bn.parameters()))
        )
        or not _map_reproduces_kernel(training=False)
        or not neuron.reads_normalisation(y)
    ):
        return None
    bn._check_input_dim(y.flatten(0, 1))
    normalisation = _normalisation(y, bn, *_running_statistics(bn))
    return None if normalisation is None else neuron.forward_normalised(y, normalisation)


class _BatchNormFire(torch.autograd.Function):
    """``apply(y, bn, neuron, with_normalised, *params) -> (neuron(bn(y)), bn(y) or None)``,
    saving ``y`` and the parameters; ``bn(y)`` is written where ``with_normalised`` or the
    neuron cannot read ``y`` through BatchNorm's map."""

    @staticmethod
    def forward(
        ctx: Any,
        y: Tensor,
        bn: nn.BatchNorm2d,
        neuron: nn.Module,
        with_normalised: bool,
        *params: Tensor,
    ):
        ctx.bn, ctx.neuron = bn, neuron
        ctx.bn_params = len(list(bn.parameters()))
        ctx.save_for_backward(y, *params)
        ctx.set_materialize_grads(False)
        ctx.statistics = None
        frames = y.flatten(0, 1)
        if (
            not with_normalised
            and _statistics_kernel_applies(frames, bn)
            and _may_read_through(y, bn, neuron)
            and neuron.reads_normalisation(y)
            and _map_reproduces_kernel(training=True)
        ):
            _, *ctx.statistics = _training_batch_norm_by_statistics_kernel(
                frames, bn, normalise=False
            )
            normalisation = _normalisation(y, bn, *ctx.statistics[:2])
            return neuron.forward_normalised(y, normalisation), None
        if _forward_calls_the_kernel(y, bn):
            frames, *ctx.statistics = _training_batch_norm(frames, bn)
            normalised = frames.unflatten(0, y.shape[:2])
        else:
            normalised = _batch_norm(y, bn)
        return neuron(normalised), normalised

    @staticmethod
    def backward(ctx: Any, grad_spikes: Tensor | None, grad_normalised: Tensor | None) -> tuple:
        y, *params = ctx.saved_tensors
        if grad_spikes is None and grad_normalised is None:
            return None, None, None, None, *(None for _ in params)
        if callable(getattr(ctx.neuron, "input_gradient", None)):
            return _backward_from_input(ctx, y, len(params), grad_spikes, grad_normalised)
        with torch.enable_grad():
            leaf = y.detach().requires_grad_()
            normalised = _normalise(leaf, ctx.bn)
            # forward(), not __call__: hooks (e.g. spike counting) saw the forward pass already
            spikes = ctx.neuron.forward(normalised)
            # backward needs the graph of both outputs, not their values: free them first
            outputs = [get_gradient_edge(spikes), get_gradient_edge(normalised)]
            del spikes, normalised
            pairs = [
                (edge, grad)
                for edge, grad in zip(outputs, (grad_spikes, grad_normalised), strict=True)
                if grad is not None
            ]
            wanted = [leaf, *(p for p in params if p.requires_grad)]
            edges, grad_outputs = zip(*pairs, strict=True)
            grads = iter(torch.autograd.grad(edges, wanted, grad_outputs, allow_unused=True))
        grad_y = next(grads)
        grad_params = [next(grads) if p.requires_grad else None for p in params]
        return grad_y, None, None, None, *grad_params


def _backward_from_input(
    ctx: Any, y: Tensor, params: int, grad_spikes: Tensor | None, grad_normalised: Tensor | None
) -> tuple:
    """:meth:`_BatchNormFire.backward` for a neuron with ``input_gradient`` (the multi-step
    neurons): BatchNorm's forward kernel runs again (the same normalised input, bit for bit,
    and its batch statistics), the neuron back-propagates from that input without a forward
    pass, and BatchNorm's backward kernel takes the statistics: no graph is built, and the
    gradients are those of the graph, bit for bit. Where the neuron can read ``y`` through
    BatchNorm's map, it recharges from ``y`` and the normalised input is never written.
    ``params`` is the number of parameters saved (BatchNorm's, then the neuron's); returns
    what :meth:`_BatchNormFire.backward` does.
    """
    bn, neuron = ctx.bn, ctx.neuron
    frames = y.flatten(0, 1)
    normalisation = None
    if (
        ctx.statistics is not None
        and grad_spikes is not None
        and callable(getattr(neuron, "reads_normalisation", None))
        and neuron.reads_normalisation(y)
        and _map_reproduces_kernel(training=True)
    ):
        mean, invstd, reserve, kernel = ctx.statistics
        normalisation = _normalisation(y, bn, mean, invstd)
    if normalisation is not None:
        normalised = None
    elif ctx.statistics is not None and _affine_reproduces_kernel(
        *_input_kind(frames, bn.weight, bn.bias)
    ):
        mean, invstd, reserve, kernel = ctx.statistics
        normalised = _affine_normalisation(frames, bn.weight, bn.bias, mean, invstd)
    else:
        # the kernel that nn.BatchNorm's forward chose (cuDNN's on CUDA, the native one on the
        # CPU), so that the recomputed input, and every spike, is the forward's bit for bit
        normalised, mean, invstd, reserve, kernel = torch.ops.aten._batch_norm_impl_index(
            frames, bn.weight, bn.bias, None, None, True, 0.0, bn.eps, torch.backends.cudnn.enabled
        )
    neuron_grads = [None] * (params - ctx.bn_params)
    grad = grad_normalised
    if grad_spikes is not None:
        if normalisation is None:
            grad_input, neuron_grads = neuron.input_gradient(
                normalised.unflatten(0, y.shape[:2]), grad_spikes
            )
        else:  # a neuron's own input_gradient may take the first two arguments alone
            grad_input, neuron_grads = neuron.input_gradient(y, grad_spikes, normalisation)
        # a fresh tensor: summed in place, so that the backward holds no more than the graph's
        grad = grad_input if grad is None else grad_input.add_(grad)
    del normalised  # BatchNorm's backward reads y and the statistics, not its output
    needed = [p is not None and p.requires_grad for p in (bn.weight, bn.bias)]
    grad_y, grad_weight, grad_bias = torch.ops.aten._batch_norm_impl_index_backward(
        kernel, frames, grad.flatten(0, 1), bn.weight, None, None, mean, invstd, True, bn.eps,
        [ctx.needs_input_grad[0], *needed], reserve,
    )  # fmt: skip
    bn_grads = [g for p, g in ((bn.weight, grad_weight), (bn.bias, grad_bias)) if p is not None]
    grad_y = None if grad_y is None else grad_y.unflatten(0, y.shape[:2])
    return grad_y, None, None, None, *bn_grads, *neuron_grads


def batch_norm_fire(
    y: Tensor,
    bn: nn.BatchNorm1d | nn.BatchNorm2d,
    neuron: nn.Module,
    with_normalised: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``neuron(bn(y))`` for ``y [T, B, C, H, W]`` (``BatchNorm2d`` per step; ``[T, B, C, N]`` with
    ``BatchNorm1d``), spikes shaped like ``y``;
    with ``with_normalised=True``, the pair ``(spikes, bn(y))``, for a layer that reads ``bn(y)``
    besides the neuron (a residual sum: its gradient flows back through the same BatchNorm).

    In training with gradients enabled, autograd keeps ``y`` (and the parameters) only; the
    normalised input and the neuron's membranes are recomputed in the backward pass.
    Elsewhere (evaluation, ``torch.no_grad``, inside ``torch.compile``, under ``torch.fx``
    tracing, a BatchNorm that is not ``nn.BatchNorm1d`` or ``nn.BatchNorm2d`` itself, e.g.
    ``SyncBatchNorm``, a neuron whose ``fuse_with_batch_norm`` is ``False``: the integer
    neurons, or a backward hook on either module or global, which only the module's own call
    sets up) it is the plain pair. Forward hooks on the BatchNorm see its forward pass, once;
    one that replaces its output is not differentiated through (switch the fusion off for
    that).

    Where the neuron can read ``y`` through BatchNorm's map (the C loops; no hooks on either
    module), ``bn(y)`` is not written unless ``with_normalised``: in evaluation without a
    gradient, in the fused training forward and in its backward pass (see the module's
    docstring). The spikes, running statistics and gradients are the same bits.
    """
    fuse = (
        isinstance(y, Tensor)  # not a torch.fx proxy: a traced graph records the plain pair
        and type(bn) in _FUSABLE_BATCH_NORMS
        and bn.training
        and torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and getattr(neuron, "fuse_with_batch_norm", True)
        and not (_backward_hooked(bn) or _backward_hooked(neuron))
        and (y.requires_grad or any(p.requires_grad for p in bn.parameters()))
    )
    if fuse:
        params = (*bn.parameters(), *neuron.parameters())
        spikes, normalised = _BatchNormFire.apply(y, bn, neuron, with_normalised, *params)
        return (spikes, normalised) if with_normalised else spikes
    if not with_normalised and isinstance(y, Tensor) and type(bn) in _FUSABLE_BATCH_NORMS:
        spikes = _fire_in_evaluation(y, bn, neuron)
        if spikes is not None:
            return spikes
    normalised = _batch_norm(y, bn)
    spikes = neuron(normalised)
    return (spikes, normalised) if with_normalised else spikes


def set_bn_neuron_fusion(model: nn.Module, enabled: bool = True) -> None:
    """Fuse (``True``, every layer's default) or not each BatchNorm + neuron pair of ``model``.

    Sets ``fuse_bn_neuron`` on every module that has that switch (``ConvBN``,
    ``SpikingTokenMLP``).
    """
    _checks.boolean("enabled", enabled)
    for module in model.modules():
        if hasattr(module, "fuse_bn_neuron"):
            module.fuse_bn_neuron = enabled
