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

spikezoo's layers fuse every BatchNorm that feeds a neuron directly (``ConvBN.conv_bn_fire``,
and ``SpikingTokenMLP`` for its ``BatchNorm1d``);
:func:`set_bn_neuron_fusion` switches it off and on for a whole model, e.g. to compare.
"""

from __future__ import annotations

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
    _forward_calls_the_kernel,
    _input_kind,
    _training_batch_norm,
    batch_norm,
)

__all__ = ["batch_norm_fire", "set_bn_neuron_fusion"]


def _batch_norm(y: Tensor, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> Tensor:
    """``bn`` over ``y [T, B, C, ...]`` with T folded into the batch (as ``per_step``)."""
    return batch_norm(bn, y.flatten(0, 1)).unflatten(0, y.shape[:2])


def _normalise(y: Tensor, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> Tensor:
    """``y [T, B, C, ...]`` normalised with its batch statistics, running statistics untouched."""
    frames = F.batch_norm(y.flatten(0, 1), None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    return frames.unflatten(0, y.shape[:2])


class _BatchNormFire(torch.autograd.Function):
    """``apply(y, bn, neuron, *params) -> (neuron(bn(y)), bn(y))``, saving ``y`` and the
    parameters."""

    @staticmethod
    def forward(ctx: Any, y: Tensor, bn: nn.BatchNorm2d, neuron: nn.Module, *params: Tensor):
        ctx.bn, ctx.neuron = bn, neuron
        ctx.bn_params = len(list(bn.parameters()))
        ctx.save_for_backward(y, *params)
        ctx.set_materialize_grads(False)
        ctx.statistics = None
        if _forward_calls_the_kernel(y, bn):
            frames, *ctx.statistics = _training_batch_norm(y.flatten(0, 1), bn)
            normalised = frames.unflatten(0, y.shape[:2])
        else:
            normalised = _batch_norm(y, bn)
        return neuron(normalised), normalised

    @staticmethod
    def backward(ctx: Any, grad_spikes: Tensor | None, grad_normalised: Tensor | None) -> tuple:
        y, *params = ctx.saved_tensors
        if grad_spikes is None and grad_normalised is None:
            return None, None, None, *(None for _ in params)
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
        return grad_y, None, None, *grad_params


def _backward_from_input(
    ctx: Any, y: Tensor, params: int, grad_spikes: Tensor | None, grad_normalised: Tensor | None
) -> tuple:
    """:meth:`_BatchNormFire.backward` for a neuron with ``input_gradient`` (the multi-step
    neurons): BatchNorm's forward kernel runs again (the same normalised input, bit for bit,
    and its batch statistics), the neuron back-propagates from that input without a forward
    pass, and BatchNorm's backward kernel takes the statistics: no graph is built, and the
    gradients are those of the graph, bit for bit. ``params`` is the number of parameters
    saved (BatchNorm's, then the neuron's); returns what :meth:`_BatchNormFire.backward` does.
    """
    bn, neuron = ctx.bn, ctx.neuron
    frames = y.flatten(0, 1)
    if ctx.statistics is not None and _affine_reproduces_kernel(
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
        grad_input, neuron_grads = neuron.input_gradient(
            normalised.unflatten(0, y.shape[:2]), grad_spikes
        )
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
    return grad_y, None, None, *bn_grads, *neuron_grads


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
    ``SyncBatchNorm``, or a neuron whose ``fuse_with_batch_norm`` is ``False``: the integer
    neurons) it is the plain pair. Forward hooks on the BatchNorm see its forward pass, once;
    one that replaces its output is not differentiated through (switch the fusion off for
    that).
    """
    fuse = (
        isinstance(y, Tensor)  # not a torch.fx proxy: a traced graph records the plain pair
        and type(bn) in _FUSABLE_BATCH_NORMS
        and bn.training
        and torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and getattr(neuron, "fuse_with_batch_norm", True)
        and (y.requires_grad or any(p.requires_grad for p in bn.parameters()))
    )
    if fuse:
        params = (*bn.parameters(), *neuron.parameters())
        spikes, normalised = _BatchNormFire.apply(y, bn, neuron, *params)
    else:
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
