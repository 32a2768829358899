"""BatchNorm in training on the CPU: what PyTorch computes, bit for bit, in less time.

PyTorch's CPU kernel sums each channel of a contiguous ``[N, C, ...]`` input in index order,
one channel at a time per thread, into a double: a chain of dependent additions that runs at
the latency of one add per value. On 2 threads its training-mode forward took 2.2 ms for
``[1, 192, 112, 112]`` float32, eleven times an evaluation-mode BatchNorm of the same tensor.
spikezoo's C kernel (``spikezoo/native/batch_norm.c``) sums eight channels side by side, each
in the same order, and writes their normalised output while they are in cache, on PyTorch's
threads: the same mean, inverse standard deviation, running statistics and output, bit for bit
(:func:`batch_statistics`), in 0.62 ms.

:func:`batch_norm` is ``bn(frames)`` for spikezoo's layers: in a CPU training forward it runs
that way, under an autograd function whose backward is PyTorch's BatchNorm backward kernel
(same gradients, bit for bit); elsewhere it calls ``bn``. :func:`~spikezoo.layers.batch_norm_fire`
computes a fused pair's BatchNorm the same way, and its backward (like
:mod:`~spikezoo.layers.residual_sums`) recomputes the normalised output from the statistics with
the same C code (:func:`_affine_normalisation`). Before its first use in a process, the C kernel
is compared with PyTorch's on a probe, every output bit for bit; where it cannot be built (no C
compiler), or differs, PyTorch's kernel runs.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.modules import module as module_hooks

from spikezoo import native
from spikezoo.native import pointer

__all__ = ["LayerThenBatchNorm", "batch_norm", "batch_statistics"]

_log = logging.getLogger(__name__)

_POINTER, _SIZE, _REAL, _FLAG = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int


#: The fewest values for which a training call takes the C kernel: below, the Python around it
#: (an autograd function, about 0.1 ms) costs what it saves. A training call, forward and
#: backward, against ``nn.BatchNorm2d``'s on 2 threads (2026-12-05): ``[1, 32, 32, 32]`` (33k
#: values) 0.63x the speed, ``[1, 48, 32, 32]`` (49k) 0.90x, ``[4, 256, 8, 8]`` (66k) 1.03x,
#: ``[1, 384, 14, 14]`` (75k) 1.04x, ``[1, 96, 32, 32]`` (98k) 1.10x, ``[1, 48, 64, 64]``
#: (197k) 1.26x, ``[1, 192, 56, 56]`` (602k) 1.60x, ``[16, 64, 32, 32]`` (1M) 2.03x.
MIN_VALUES = 1 << 16


def _one_per_channel(t: Tensor, channels: int) -> bool:
    """Whether ``t`` is a float32 CPU vector of ``channels`` values, one after the other: the
    kernel reads and writes ``channels`` of them (other sizes are for PyTorch's kernel to
    refuse, with its message)."""
    return (
        t.dtype == torch.float32
        and t.is_cpu
        and t.dim() == 1
        and t.shape[0] == channels
        and t.is_contiguous()
    )


def _laid_out_for_kernel(frames: Tensor, *per_channel: Tensor | None) -> bool:
    """Whether the C kernel computes what PyTorch's does for ``frames [N, C, ...]`` (its
    contiguous float32 path; a single value per channel and channels-last input take other code
    in PyTorch) with the ``[C]`` tensors ``per_channel`` (float32, contiguous, ``C`` values, or
    ``None``)."""
    if not (
        frames.is_cpu
        and frames.dtype == torch.float32
        and frames.dim() >= 3
        and frames.shape[1] > 1
        and frames.numel() > frames.shape[0] * frames.shape[1]
        and frames.is_contiguous()
    ):
        return False
    channels = frames.shape[1]
    return all(t is None or _one_per_channel(t, channels) for t in per_channel)


def _applies(frames: Tensor, *per_channel: Tensor | None) -> bool:
    """:func:`_laid_out_for_kernel`, and ``frames`` large enough for the kernel to pay
    (:data:`MIN_VALUES`)."""
    return frames.numel() >= MIN_VALUES and _laid_out_for_kernel(frames, *per_channel)


class _Kernels(NamedTuple):
    """The C functions, and whether a multiply-add is fused where PyTorch's kernel fuses it."""

    training: native.Kernel
    normalise: native.Kernel
    contract: bool


def _sizes(frames: Tensor) -> tuple[int, int, int]:
    batches, channels = frames.shape[:2]
    return batches, channels, frames.numel() // (batches * channels)


def _compute(
    kernels: _Kernels,
    frames: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    momentum: float,
    eps: float,
    normalise: bool,
) -> tuple[Tensor | None, Tensor, Tensor]:
    """``(normalised or None, mean, invstd)`` of ``frames [N, C, ...]`` by the C kernel."""
    mean, invstd = torch.empty(2, frames.shape[1]).unbind()
    normalised = torch.empty_like(frames) if normalise else None
    kernels.training(
        frames.data_ptr(), *_sizes(frames), momentum, eps, pointer(weight), pointer(bias),
        kernels.contract, mean.data_ptr(), invstd.data_ptr(), pointer(running_mean),
        pointer(running_var), pointer(normalised), torch.get_num_threads(),
    )  # fmt: skip
    return normalised, mean, invstd


def _normalise(
    kernels: _Kernels,
    frames: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    invstd: Tensor,
) -> Tensor:
    normalised = torch.empty_like(frames)
    kernels.normalise(
        frames.data_ptr(), *_sizes(frames), pointer(weight), pointer(bias), kernels.contract,
        mean.data_ptr(), invstd.data_ptr(), normalised.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return normalised


def _reproduces_pytorch(kernels: _Kernels) -> bool:
    """Whether ``kernels`` give every output of PyTorch's kernel bit for bit on a probe: 19
    channels (two blocks of eight and a remainder, on as many threads as PyTorch uses), values
    spread over six decades, with and without the affine parameters."""
    generator = torch.Generator().manual_seed(0)
    for shape in [(3, 19, 35), (2, 19, 5, 7)]:
        per_channel = (1, -1, *[1] * (len(shape) - 2))
        frames = torch.randn(shape, generator=generator) * torch.logspace(-3, 3, 19).view(
            per_channel
        )
        running = torch.randn(2, 19, generator=generator).abs_().unbind()
        for weight, bias in [torch.randn(2, 19, generator=generator).unbind(), (None, None)]:
            ours = [r.clone() for r in running]
            theirs = [r.clone() for r in running]
            *outputs, mean, invstd = _compute(
                kernels, frames, weight, bias, *ours, 0.3, 1e-5, normalise=True
            )
            outputs += [mean, invstd, _normalise(kernels, frames, weight, bias, mean, invstd)]
            expected, kernel_mean, kernel_invstd, _, _ = torch.ops.aten._batch_norm_impl_index(
                frames, weight, bias, *theirs, True, 0.3, 1e-5, False
            )
            pairs = zip(
                [*outputs, *ours],
                [expected, kernel_mean, kernel_invstd, expected, *theirs],
                strict=True,
            )
            if not all(torch.equal(a, b) for a, b in pairs):
                return False
    return True


@functools.cache
def _kernel() -> _Kernels | None:
    """The C kernels, once they have given PyTorch's outputs bit for bit on a probe, with a
    multiply-add fused or not as PyTorch's kernel computes; else ``None``."""
    library = native.library("batch_norm")
    if library is None:
        return None
    training = native.kernel(
        library, "batch_norm_training_f32",
        [_POINTER, *[_SIZE] * 3, _REAL, _REAL, *[_POINTER] * 2, _FLAG, *[_POINTER] * 5, _FLAG],
    )  # fmt: skip
    normalise = native.kernel(
        library, "batch_norm_normalise_f32",
        [_POINTER, *[_SIZE] * 3, *[_POINTER] * 2, _FLAG, *[_POINTER] * 3, _FLAG],
    )  # fmt: skip
    for contract in (True, False):
        kernels = _Kernels(training, normalise, contract)
        if _reproduces_pytorch(kernels):
            return kernels
    _log.warning(
        "spikezoo: the C BatchNorm kernel differs from PyTorch %s's; PyTorch's kernel runs instead",
        torch.__version__,
    )
    return None


def batch_statistics(
    frames: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    momentum: float,
    eps: float,
) -> tuple[Tensor, Tensor] | None:
    """``(mean, invstd)`` (``[C]``) of ``frames [N, C, ...]`` in training, as PyTorch's CPU
    kernel computes them, with ``running_mean`` and ``running_var`` (``[C]`` or ``None``)
    updated in place with ``momentum`` as that kernel updates them.

    ``None``, with nothing changed, where the C kernel does not apply: not a contiguous float32
    CPU tensor with more than one channel and more than one value per channel and sample,
    fewer than :data:`MIN_VALUES` values, running statistics that are not float32 vectors of
    ``C`` values, or no C kernel (not built, or unequal to PyTorch's).
    """
    if not _applies(frames, running_mean, running_var):
        return None
    kernels = _kernel()
    if kernels is None:
        return None
    _, mean, invstd = _compute(
        kernels, frames, None, None, running_mean, running_var, momentum, eps, normalise=False
    )
    return mean, invstd


#: The BatchNorms whose training forward spikezoo computes itself (:func:`batch_norm`, and the
#: fused BatchNorm + neuron pairs, whose backward recomputes it). A subclass may compute
#: otherwise (``SyncBatchNorm`` normalises with every process's statistics) and is called.
_FUSABLE_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _backward_hooked(module: nn.Module) -> bool:
    """Whether calling ``module`` would set up a backward hook, its own or a global one
    (``register_full_backward_hook``): only the module's call does, so a forward that computes
    the module itself, or inside an autograd function, would leave the hook out."""
    return bool(
        module._backward_hooks
        or module._backward_pre_hooks
        or module_hooks._global_backward_hooks
        or module_hooks._global_backward_pre_hooks
    )


def _forward_calls_the_kernel(y: Tensor, bn: nn.Module) -> bool:
    """Whether a forward may compute ``bn`` itself, without calling the module: on the CPU,
    where no hook, forward or backward, on ``bn`` or global, would run by calling it."""
    return (
        y.is_cpu
        and not (bn._forward_hooks or bn._forward_pre_hooks)
        and not (module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks)
        and not _backward_hooked(bn)
    )


def _begin_training_call(frames: Tensor, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple:
    """What ``nn.BatchNorm``'s ``forward`` does before its kernel in training (``frames [N, C,
    ...]``): the same checks and ``num_batches_tracked`` update; returns the running statistics
    to update (``None`` each where untracked) and the momentum factor to update them with."""
    bn._check_input_dim(frames)
    if frames.numel() == frames.shape[1]:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {frames.size()}"
        )
    if bn.eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {bn.eps}")
    factor = 0.0 if bn.momentum is None else bn.momentum
    running = (bn.running_mean, bn.running_var) if bn.track_running_stats else (None, None)
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # a cumulative average
            factor = 1.0 / float(bn.num_batches_tracked)
    return running, factor


def _training_batch_norm_by_statistics_kernel(
    frames: Tensor, bn: nn.BatchNorm1d | nn.BatchNorm2d, normalise: bool = True
) -> tuple:
    """:func:`_training_batch_norm` where :func:`_statistics_kernel_applies`: the statistics
    and the output from the C kernel (``None`` for the output unless ``normalise``)."""
    running, factor = _begin_training_call(frames, bn)
    normalised, mean, invstd = _compute(
        _kernel(), frames, bn.weight, bn.bias, *running, factor, bn.eps, normalise=normalise
    )
    # what the native CPU kernel (backend index 0) returns besides: an empty reserve
    return normalised, mean, invstd, torch.empty(0, dtype=torch.uint8), 0


def _training_batch_norm(frames: Tensor, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple:
    """``bn(frames)`` in training mode (``frames [N, C, ...]``), computed as
    ``nn.BatchNorm``'s ``forward`` computes it (the same checks, running statistics and
    ``num_batches_tracked`` updates), with what the kernel returns besides: ``(normalised,
    mean, invstd, reserve, kernel)``, the last four for its backward kernel. On the CPU they
    come from the C kernel where :func:`_statistics_kernel_applies`."""
    if _statistics_kernel_applies(frames, bn):
        return _training_batch_norm_by_statistics_kernel(frames, bn)
    running, factor = _begin_training_call(frames, bn)
    return torch.ops.aten._batch_norm_impl_index(
        frames, bn.weight, bn.bias, *running, True, factor, bn.eps, torch.backends.cudnn.enabled
    )


def _affine_normalisation(
    frames: Tensor, weight: Tensor | None, bias: Tensor | None, mean: Tensor, invstd: Tensor
) -> Tensor:
    """``frames [N, C, ...]`` normalised with the batch statistics ``mean`` and ``invstd``
    (``[C]``) as PyTorch's CPU kernel does it: ``x * alpha + beta`` per channel, with
    ``alpha = invstd * weight`` and ``beta = bias - mean * alpha``, each sum of a product a
    multiply-add where the kernel's build contracts one. By the C kernel where it applies (and
    no gradient is asked for), else with ``addcmul``."""
    differentiable = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (frames, weight, bias, mean, invstd)
    )
    if not differentiable and _laid_out_for_kernel(frames, weight, bias, mean, invstd):
        kernels = _kernel()
        if kernels is not None:
            return _normalise(kernels, frames, weight, bias, mean, invstd)
    alpha = invstd if weight is None else invstd * weight
    beta = torch.addcmul(torch.zeros_like(alpha) if bias is None else bias, mean, alpha, value=-1)
    per_channel = (-1,) + (1,) * (frames.dim() - 2)
    return torch.addcmul(beta.view(per_channel), frames, alpha.view(per_channel)).to(frames.dtype)


def _input_kind(frames: Tensor, weight: Tensor | None, bias: Tensor | None) -> tuple:
    """What decides which of the CPU kernel's code paths normalises ``frames`` with ``weight``
    and ``bias`` (its argument to :func:`_affine_reproduces_kernel`)."""
    weight = weight if weight is not None else bias
    return (
        frames.dtype,
        None if weight is None else weight.dtype,
        frames.dim(),
        frames.dim() == 4 and not frames.is_contiguous(),
        frames.is_contiguous() or frames.is_contiguous(memory_format=torch.channels_last),
    )


@functools.cache
def _affine_reproduces_kernel(
    dtype: torch.dtype,
    param_dtype: torch.dtype | None,
    dims: int,
    channels_last: bool,
    dense: bool,
) -> bool:
    """Whether :func:`_affine_normalisation` gives the CPU kernel's training output bit for bit
    for input of this kind (dtype, parameters' dtype or ``None``, dimensions, layout), tried
    once per process on a probe: 19 channels and 35 values per channel, so that both the
    kernel's vector loop and its remainder run (the build, and the CPU's vector width, decide
    whether a product and a sum are contracted into one multiply-add)."""
    if not dense or dims not in (2, 3, 4):
        return False
    generator = torch.Generator().manual_seed(0)
    shape = {2: (35, 19), 3: (3, 19, 35), 4: (3, 19, 5, 7)}[dims]
    frames = (torch.randn(shape, generator=generator) * 3 + 1).to(dtype)
    if channels_last:
        frames = frames.contiguous(memory_format=torch.channels_last)
    weight = bias = None
    if param_dtype is not None:
        weight, bias = torch.randn(2, shape[1], generator=generator).to(param_dtype).unbind()
    expected, mean, invstd, _, _ = torch.ops.aten._batch_norm_impl_index(
        frames, weight, bias, None, None, True, 0.0, 1e-5, False
    )
    return torch.equal(_affine_normalisation(frames, weight, bias, mean, invstd), expected)


class _TrainingBatchNorm(torch.autograd.Function):
    """``apply(frames, bn, weight, bias) -> bn(frames)`` in training, where
    :func:`_statistics_kernel_applies`; saves ``frames`` and the weight, and keeps the batch
    statistics, as PyTorch's BatchNorm node does."""

    @staticmethod
    def forward(
        ctx: Any, frames: Tensor, bn: nn.Module, weight: Tensor | None, bias: Tensor | None
    ) -> Tensor:
        ctx.bn, ctx.eps = bn, bn.eps
        ctx.save_for_backward(frames, weight)
        ctx.set_materialize_grads(False)
        normalised, *ctx.statistics = _training_batch_norm_by_statistics_kernel(frames, bn)
        return normalised

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None) -> tuple:
        if grad is None:
            return None, None, None, None
        frames, weight = ctx.saved_tensors
        mean, invstd, reserve, kernel = ctx.statistics
        grad_frames, grad_weight, grad_bias = torch.ops.aten._batch_norm_impl_index_backward(
            kernel, frames, grad, weight, None, None, mean, invstd, True, ctx.eps,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3]], reserve,
        )  # fmt: skip
        return grad_frames, None, grad_weight, grad_bias


def _statistics_kernel_applies(frames: Tensor, bn: nn.Module) -> bool:
    running = (bn.running_mean, bn.running_var) if bn.track_running_stats else (None, None)
    return _applies(frames, *running, bn.weight, bn.bias) and _kernel() is not None


def batch_norm(bn: nn.BatchNorm1d | nn.BatchNorm2d, frames: Tensor) -> Tensor:
    """``bn(frames)`` for ``frames [N, C, ...]``: the same outputs, gradients and running
    statistics, bit for bit.

    In training, on the CPU, for a plain ``nn.BatchNorm1d`` or ``nn.BatchNorm2d`` without forward
    hooks (on it, or global: they see the module call) and an input that :func:`batch_statistics`
    takes (contiguous float32, at least :data:`MIN_VALUES` values), outside ``torch.compile``
    and torch.fx tracing, the statistics and the output come from spikezoo's C kernel;
    backward is PyTorch's BatchNorm backward kernel, called with the statistics.
    Everywhere else it is ``bn(frames)``.
    """
    if (
        isinstance(frames, Tensor)
        and type(bn) in _FUSABLE_BATCH_NORMS
        and bn.training
        and not torch.compiler.is_compiling()
        and _forward_calls_the_kernel(frames, bn)
        and _statistics_kernel_applies(frames, bn)
    ):
        return _TrainingBatchNorm.apply(frames, bn, bn.weight, bn.bias)
    return bn(frames)


class LayerThenBatchNorm(nn.Sequential):
    """``nn.Sequential(layer, bn)`` whose BatchNorm runs through :func:`batch_norm`.

    ``[N, C_in, ...]`` -> ``[N, C, ...]``. The same children, state-dict keys (``0.*``,
    ``1.*``) and outputs as the plain ``nn.Sequential``, which the authors' code uses.
    """

    def __init__(self, layer: nn.Module, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> None:
        super().__init__(layer, bn)

    def forward(self, x: Tensor) -> Tensor:
        """``bn(layer(x))``."""
        return batch_norm(self[1], self[0](x))
