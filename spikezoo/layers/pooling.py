"""Max-pooling that keeps little for backward: window offsets instead of int64 indices.

``nn.MaxPool2d`` in training saves its input (a float tensor the size of the input, which its
backward reads only for the shape) and the position of each maximum as ``int64``: 8 bytes per
output value, twice a float32 output. :class:`MaxPool2d` saves only where in its window each
maximum lies, as an offset from the window's first element in the smallest integer dtype that
holds it: for a 3x3 window, ``int8`` on rows up to 62 values wide, ``int16`` up to 16,382, so 1
or 2 bytes per output value.

On the CPU, for contiguous float32 input, a C kernel (``spikezoo/native/max_pool.c``) computes
the maxima and offsets and, in backward, the gradient, as PyTorch's NCHW kernels compute them
(checked once per process on a probe, bit for bit, NaN and ties included): PyTorch's kernel
walks one scalar window at a time and writes ``int64`` indices, the C kernel updates a whole
output row per window position, vectorised (strides 1 and 2 compiled as constants, so that
the strided loads are vector loads), and writes the offsets directly. The training forward,
on spikes (3x3, stride 2, 2 threads): ``[4, 48, 224, 224]`` 25.3 -> 3.0 ms,
``[16, 256, 32, 32]`` 8.8 -> 3.2 ms; backward ``[4, 96, 112, 112]`` 1.8 -> 0.7 ms. On short
output rows with many channels PyTorch's channels-last forward is faster and runs instead
(:data:`_KERNEL_FROM_WIDTH`); backward then takes the C kernel all the same. Elsewhere
PyTorch's kernel runs (on a channels-last copy from :data:`_CHANNELS_LAST_FROM`
channels on, where it is vectorised; its maxima and indices are the same), the offsets are
taken from its indices, and backward restores the ``int64`` indices from them and runs its
backward kernel; either way the gradients are bit for bit those of ``nn.MaxPool2d``.

Without gradients (inference, or an input that needs none) no index is needed at all, and the
maximum is taken separably: over the window's columns, then its rows, as ``torch.maximum`` of
strided views. PyTorch's NCHW kernel computes ``int64`` indices even then, one scalar window at
a time; the separable maximum was 2.4-6.9x faster on the models' pools (3x3, stride 2 or 1,
float32, 2 idle cores: ``[16, 48, 112, 112]`` 30.6 -> 12.8 ms, ``[8, 384, 14, 14]`` 6.9 -> 1.0
ms), and faster than converting to channels-last for PyTorch's vectorised kernel. The values
are the same (a maximum is exact; NaN propagates alike), except that between a ``-0.0`` and a
``0.0`` in one window either may be returned. On rows of at least
:data:`_KERNEL_WITHOUT_GRAD_FROM_WIDTH` outputs the C kernel, which returns PyTorch's values
exactly, is faster still and runs instead (without finding offsets).
"""

from __future__ import annotations

import ctypes
import functools
import logging
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from spikezoo import native
from spikezoo.native import pointer
from spikezoo.neurons.saved_spikes import mark_spikes, marked_as_spikes

__all__ = ["MaxPool2d", "max_pool2d"]

_log = logging.getLogger(__name__)

_OFFSET_DTYPES = (torch.int8, torch.int16, torch.int32)

#: From this many channels on, the training forward pools a channels-last copy: PyTorch's
#: channels-last kernel vectorises over channels, its NCHW kernel runs one scalar window at a
#: time. Both give the same maxima and indices. Measured (3x3, stride 2, spikes, 2 idle cores,
#: the copies included): ``[4, 96, 112, 112]`` 16.7 -> 9.4 ms, ``[4, 384, 28, 28]`` 4.3 -> 1.8
#: ms, but ``[4, 48, 224, 224]`` 33.8 -> 44.7 ms.
_CHANNELS_LAST_FROM = 64

#: The narrowest output rows for which the training forward takes the C kernel where PyTorch
#: would pool a channels-last copy: the C kernel works one output row at a time, and short rows
#: cost it more than PyTorch's channels-last kernel, which vectorises over channels. Measured
#: (3x3, stride 2, spikes, 2 threads, the copies included): ``[4, 384, 28, 28]`` (rows of 14)
#: 0.76 ms PyTorch, 1.37 ms C; ``[16, 512, 16, 16]`` (8) 2.50 and 2.52 ms; ``[16, 256, 32, 32]``
#: (16) 8.76 and 3.22 ms; ``[4, 192, 56, 56]`` (28) 2.00 and 1.36 ms.
_KERNEL_FROM_WIDTH = 16

#: The narrowest output rows for which the forward without gradients takes the C kernel instead
#: of the separable maximum (which computes no position). Measured on an Intel Xeon (3x3,
#: spikes, 2 threads, 2026-12-05, the kernel without offsets): stride 2 ``[4, 48, 224, 224]``
#: (rows of 112) 8.25 -> 2.25 ms, ``[4, 192, 56, 56]`` (28) 2.15 -> 1.10 ms, ``[16, 256, 32,
#: 32]`` (16) 3.23 -> 2.50 ms, but ``[16, 512, 16, 16]`` (8) 1.75 and 2.10 ms; stride 1
#: ``[4, 192, 56, 56]`` (56) 2.47 -> 2.05 ms, but ``[8, 384, 14, 14]`` (14) 0.72 and 1.37 ms.
_KERNEL_WITHOUT_GRAD_FROM_WIDTH = 16


def _window_starts(
    out_size: tuple[int, int], in_width: int, stride: tuple[int, int], padding: tuple[int, int],
    device: torch.device,
) -> Tensor:  # fmt: skip
    """``int64 [H_out, W_out]``: the flat index, in an ``H x W`` plane, of each window's corner.

    Windows that start in the padding have a corner outside the plane (a negative row or column);
    the maximum's offset from it is still the distance in flat index.
    """
    rows = torch.arange(out_size[0], device=device) * stride[0] - padding[0]
    cols = torch.arange(out_size[1], device=device) * stride[1] - padding[1]
    return rows.unsqueeze(1) * in_width + cols


def _memory_format(x: Tensor) -> torch.memory_format:
    """``channels_last`` for a channels-last ``x [N, C, H, W]``, else ``contiguous_format``."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _offset_dtype(kernel: tuple[int, int], width: int) -> torch.dtype:
    """The smallest integer dtype that holds the offsets in a ``kernel`` window of rows
    ``width`` wide: ``0 .. (kernel_h - 1) * width + kernel_w - 1``."""
    largest = (kernel[0] - 1) * width + kernel[1] - 1
    return next(d for d in _OFFSET_DTYPES if largest <= torch.iinfo(d).max)


class _Kernels(NamedTuple):
    forward: native.Kernel
    backward: native.Kernel


def _output_size(
    size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
    padding: tuple[int, int],
) -> tuple[int, int]:  # fmt: skip
    windows = zip(size, kernel, stride, padding, strict=True)
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in windows)


def _pool_by_kernel(
    kernels: _Kernels, x: Tensor, kernel: tuple[int, int], stride: tuple[int, int],
    padding: tuple[int, int], with_offsets: bool = True,
) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """``(pooled, offsets or None)`` of a contiguous float32 ``x [..., H, W]`` by the C
    kernel."""
    height, width = x.shape[-2:]
    out_size = _output_size((height, width), kernel, stride, padding)
    pooled = x.new_empty((*x.shape[:-2], *out_size))
    dtype = _offset_dtype(kernel, width)
    offsets = torch.empty(pooled.shape, dtype=dtype) if with_offsets else None
    failed = kernels.forward(
        x.data_ptr(), x.numel() // (height * width), height, width, *kernel, *stride, *padding,
        *out_size, pooled.data_ptr(), pointer(offsets),
        dtype.itemsize, torch.get_num_threads(),
    )  # fmt: skip
    if failed:
        raise MemoryError(
            f"max-pooling {tuple(x.shape)}: no memory for a row of {out_size[1]} window offsets"
        )
    return pooled, offsets


def _unpool_by_kernel(
    kernels: _Kernels, grad_pooled: Tensor, offsets: Tensor, input_shape: torch.Size,
    stride: tuple[int, int], padding: tuple[int, int],
) -> Tensor:  # fmt: skip
    """The gradient ``[..., H, W]`` of the input for a contiguous float32 ``grad_pooled``."""
    height, width = input_shape[-2:]
    grad_x = grad_pooled.new_empty(input_shape)
    kernels.backward(
        grad_pooled.data_ptr(), offsets.data_ptr(), offsets.element_size(),
        grad_x.numel() // (height * width), height, width, *stride, *padding,
        *offsets.shape[-2:], grad_x.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return grad_x


def _pool_by_pytorch(
    x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """``(pooled, offsets)`` by PyTorch's kernel, the offsets from its ``int64`` indices."""
    source = x
    if x.dim() == 4 and x.shape[1] >= _CHANNELS_LAST_FROM and x.device.type == "cpu":
        source = x.contiguous(memory_format=torch.channels_last)
    pooled, indices = torch.ops.aten.max_pool2d_with_indices(source, kernel, stride, padding)
    width = x.shape[-1]
    starts = _window_starts(pooled.shape[-2:], width, stride, padding, x.device)
    offsets = indices.sub_(starts).to(_offset_dtype(kernel, width))
    if source is not x:  # back to the layout of x, as nn.MaxPool2d returns it
        pooled = pooled.contiguous(memory_format=_memory_format(x))
        offsets = offsets.contiguous()
    return pooled, offsets


def _unpool_by_pytorch(
    grad_pooled: Tensor, offsets: Tensor, input_shape: torch.Size, input_dtype: torch.dtype,
    kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
) -> Tensor:  # fmt: skip
    starts = _window_starts(offsets.shape[-2:], input_shape[-1], stride, padding, offsets.device)
    indices = offsets.long().add_(starts)
    # the backward kernel reads its input's shape and dtype only: a stride-0 stand-in
    shape_of_input = grad_pooled.new_empty((), dtype=input_dtype).expand(input_shape)
    return torch.ops.aten.max_pool2d_with_indices_backward(
        grad_pooled, shape_of_input, kernel, stride, padding, (1, 1), False, indices
    )


def _takes(t: Tensor) -> bool:
    """Whether the C kernel computes what PyTorch's NCHW kernel does for ``t``."""
    return t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()


def _pools_faster(x: Tensor, out_width: int) -> bool:
    """Whether the C kernel is the faster forward for ``x`` (see :data:`_KERNEL_FROM_WIDTH`)."""
    return x.dim() == 3 or x.shape[1] < _CHANNELS_LAST_FROM or out_width >= _KERNEL_FROM_WIDTH


def _same_bits(a: Tensor, b: Tensor) -> bool:
    return torch.equal(a.view(torch.int32), b.view(torch.int32))


def _reproduces_pytorch(kernels: _Kernels) -> bool:
    """Whether ``kernels`` give PyTorch's maxima (with and without offsets), offsets and
    gradients bit for bit on a probe: ties (spikes), NaN, infinities and negative values,
    windows of the models (3x3, stride 2 and 1, padding 1) and others, rows of both offset
    widths, on as many threads as PyTorch."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 3, (2, 3, 9, 70), generator=generator).float()
    x[0, 0] = (x[0, 0] > 0).float()
    x[0, 1, 2:5, 3:7] = float("nan")
    x[1, 0, :, :5] = float("-inf")
    x[1, 1, 4] = float("inf")
    windows = [((3, 3), (2, 2), (1, 1)), ((3, 3), (1, 1), (1, 1)), ((2, 4), (2, 3), (1, 2))]
    for kernel, stride, padding in windows:
        for plane in (x, x[:, :, :, :40].contiguous()):  # int16 and int8 offsets
            pooled, offsets = _pool_by_kernel(kernels, plane, kernel, stride, padding)
            maxima = _pool_by_kernel(kernels, plane, kernel, stride, padding, False)[0]
            expected, expected_offsets = _pool_by_pytorch(plane, kernel, stride, padding)
            # the backward kernel trusts its offsets: it runs on offsets known to be right
            if not (_same_bits(pooled, expected) and torch.equal(offsets, expected_offsets)):
                return False
            if not _same_bits(maxima, expected):
                return False
            grad = torch.randn(pooled.shape, generator=generator)
            grad_x = _unpool_by_kernel(kernels, grad, offsets, plane.shape, stride, padding)
            expected_grad = _unpool_by_pytorch(
                grad, offsets, plane.shape, plane.dtype, kernel, stride, padding
            )
            if not _same_bits(grad_x, expected_grad):
                return False
    return True


@functools.cache
def _kernel() -> _Kernels | None:
    """The C kernels, once they have given PyTorch's results bit for bit on a probe; else
    ``None``."""
    library = native.library("max_pool")
    if library is None:
        return None
    size, pointer = ctypes.c_int64, ctypes.c_void_p
    kernels = _Kernels(
        native.kernel(
            library, "max_pool2d_offsets_f32",
            [pointer, *[size] * 11, pointer, pointer, ctypes.c_int, ctypes.c_int], ctypes.c_int,
        ),
        native.kernel(
            library, "max_pool2d_offsets_backward_f32",
            [pointer, pointer, ctypes.c_int, *[size] * 9, pointer, ctypes.c_int],
        ),
    )  # fmt: skip
    if _reproduces_pytorch(kernels):
        return kernels
    _log.warning(
        "spikezoo: the C max-pool kernel differs from PyTorch %s's; PyTorch's kernel runs instead",
        torch.__version__,
    )
    return None


class _MaxPool2dOffsets(torch.autograd.Function):
    """``apply(x [N, C, H, W] or [C, H, W], kernel, stride, padding) -> x max-pooled``."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
    ) -> Tensor:
        # an invalid window goes to PyTorch's kernel, which says what is wrong with it
        valid = _separable(x.shape[-2:], kernel, stride, padding)
        out_width = _output_size(x.shape[-2:], kernel, stride, padding)[1]
        kernels = _kernel() if valid and _takes(x) and _pools_faster(x, out_width) else None
        if kernels is not None:
            pooled, offsets = _pool_by_kernel(kernels, x, kernel, stride, padding)
        else:
            pooled, offsets = _pool_by_pytorch(x, kernel, stride, padding)
        ctx.save_for_backward(offsets)
        ctx.window = kernel, stride, padding
        ctx.input_shape, ctx.input_dtype = x.shape, x.dtype
        return pooled

    @staticmethod
    def backward(ctx: Any, grad_pooled: Tensor) -> tuple:
        (offsets,) = ctx.saved_tensors
        kernel, stride, padding = ctx.window
        # the offsets point inside their windows whichever kernel found them (PyTorch's checked
        # the window); the C kernel reads them in row-major order (PyTorch's channels-last path,
        # for a channels-last input, leaves them channels-last)
        takes = _takes(grad_pooled) and offsets.is_contiguous()
        kernels = _kernel() if takes and ctx.input_dtype == torch.float32 else None
        if kernels is not None:
            grad_x = _unpool_by_kernel(
                kernels, grad_pooled, offsets, ctx.input_shape, stride, padding
            )
        else:
            grad_x = _unpool_by_pytorch(
                grad_pooled, offsets, ctx.input_shape, ctx.input_dtype, kernel, stride, padding
            )
        return grad_x, None, None, None


def _strided(x: Tensor, dim: int, start: int, count: int, step: int) -> Tensor:
    """The view of ``count`` elements of ``x`` along ``dim`` from ``start``, ``step`` apart."""
    index = [slice(None)] * x.dim()
    index[dim] = slice(start, start + step * (count - 1) + 1, step)
    return x[tuple(index)]


def _max_along(x: Tensor, dim: int, kernel: int, stride: int, padding: int) -> Tensor:
    """The max-pool of ``x`` along one dimension ``dim`` (padding counts as ``-inf``).

    The window element at ``padding`` lies inside ``x`` for every output (``2 * padding <
    kernel``), so it starts the result; each other element updates the outputs whose window it
    falls in, a strided view of ``x`` against a slice of the result.
    """
    size = x.shape[dim]
    out_size = (size + 2 * padding - kernel) // stride + 1
    out = _strided(x, dim, 0, out_size, stride).clone()
    for j in range(kernel):
        first = max(0, -((j - padding) // stride))  # first output whose element j is inside x
        last = min(out_size - 1, (size - 1 - j + padding) // stride)
        if j == padding or first > last:
            continue
        target = out.narrow(dim, first, last - first + 1)
        source = _strided(x, dim, stride * first + j - padding, last - first + 1, stride)
        torch.maximum(target, source, out=target)
    return out


def _separable(
    size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
    padding: tuple[int, int],
) -> bool:  # fmt: skip
    """Whether :func:`_separable_max_pool2d` applies: a valid window (else ``F.max_pool2d`` says
    what is wrong) whose element at ``padding`` lies inside the input for every output."""
    return all(
        s >= 1 and 0 <= 2 * p < k and n + 2 * p >= k
        for n, k, s, p in zip(size, kernel, stride, padding, strict=True)
    )


def _separable_max_pool2d(
    x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> Tensor:
    """``F.max_pool2d`` without indices, ``[..., H, W]`` -> ``[..., H', W']``: columns, then
    rows (see the module docstring)."""
    columns = _max_along(x, -1, kernel[1], stride[1], padding[1])
    return _max_along(columns, -2, kernel[0], stride[0], padding[0])


def max_pool2d(
    x: Tensor, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
) -> Tensor:  # fmt: skip
    """``F.max_pool2d(x, kernel_size, stride, padding)``, ``[N, C, H, W]`` -> ``[N, C, H', W']``,
    saving window offsets for backward when gradients are recorded, and computing no index
    otherwise (see the module docstring).

    ``x`` may also be ``[C, H, W]``. Inside ``torch.compile`` or ``torch.fx`` tracing it is
    ``F.max_pool2d``.
    """
    if (
        not isinstance(x, Tensor)  # a torch.fx proxy
        or x.dim() not in (3, 4)
        or torch.compiler.is_compiling()
    ):
        return F.max_pool2d(x, kernel_size, stride, padding)
    kernel, padding = _pair(kernel_size), _pair(padding)
    stride = _pair(stride or kernel)
    if x.requires_grad and torch.is_grad_enabled():
        pooled = _MaxPool2dOffsets.apply(x, kernel, stride, padding)
        if marked_as_spikes(x):  # every window holds one of its values: the maxima are spikes
            mark_spikes(pooled)
        return pooled
    if _separable(x.shape[-2:], kernel, stride, padding):
        out_width = _output_size(x.shape[-2:], kernel, stride, padding)[1]
        kernels = _kernel() if _takes(x) and out_width >= _KERNEL_WITHOUT_GRAD_FROM_WIDTH else None
        if kernels is not None:
            return _pool_by_kernel(kernels, x, kernel, stride, padding, with_offsets=False)[0]
        return _separable_max_pool2d(x, kernel, stride, padding)
    return F.max_pool2d(x, kernel, stride, padding)


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that saves window offsets for backward instead of its input and ``int64``
    indices (see the module docstring): the same outputs and gradients, bit for bit.

    ``[N, C, H, W]`` -> ``[N, C, H', W']``. With ``dilation``, ``ceil_mode`` or
    ``return_indices`` set it is ``nn.MaxPool2d``.
    """

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, C, H, W]`` max-pooled."""
        if self.dilation not in (1, (1, 1)) or self.ceil_mode or self.return_indices:
            return super().forward(x)
        return max_pool2d(x, self.kernel_size, self.stride, self.padding)
