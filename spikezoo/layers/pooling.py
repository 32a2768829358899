"""Max-pooling that keeps little for backward: window offsets instead of int64 indices.

``nn.MaxPool2d`` in training saves its input (a float tensor the size of the input, which its
backward reads only for the shape) and the position of each maximum as ``int64``: 8 bytes per
output value, twice a float32 output. :class:`MaxPool2d` computes the same forward pass with
PyTorch's kernel (on a channels-last copy from :data:`_CHANNELS_LAST_FROM` channels on, where
that kernel is vectorised and about twice as fast; its maxima and indices are the same) and
saves only where in its window each maximum lies, as an offset from the
window's first element in the smallest integer dtype that holds it: for a 3x3 window, ``int8``
on rows up to 62 values wide, ``int16`` up to 16,382, so 1 or 2 bytes per output value.
Backward restores the ``int64`` indices from the offsets and runs the same backward kernel, so
the gradients are bit for bit those of ``nn.MaxPool2d``.

Without gradients (inference, or an input that needs none) no index is needed at all, and the
maximum is taken separably: over the window's columns, then its rows, as ``torch.maximum`` of
strided views. PyTorch's NCHW kernel computes ``int64`` indices even then, one scalar window at
a time; the separable maximum was 2.4-6.9x faster on the models' pools (3x3, stride 2 or 1,
float32, 2 idle cores: ``[16, 48, 112, 112]`` 30.6 -> 12.8 ms, ``[8, 384, 14, 14]`` 6.9 -> 1.0
ms), and faster than converting to channels-last for PyTorch's vectorised kernel. The values
are the same (a maximum is exact; NaN propagates alike), except that between a ``-0.0`` and a
``0.0`` in one window either may be returned.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from spikezoo.neurons.saved_spikes import mark_spikes, marked_as_spikes

__all__ = ["MaxPool2d", "max_pool2d"]

_OFFSET_DTYPES = (torch.int8, torch.int16, torch.int32)

#: From this many channels on, the training forward pools a channels-last copy: PyTorch's
#: channels-last kernel vectorises over channels, its NCHW kernel runs one scalar window at a
#: time. Both give the same maxima and indices. Measured (3x3, stride 2, spikes, 2 idle cores,
#: the copies included): ``[4, 96, 112, 112]`` 16.7 -> 9.4 ms, ``[4, 384, 28, 28]`` 4.3 -> 1.8
#: ms, but ``[4, 48, 224, 224]`` 33.8 -> 44.7 ms.
_CHANNELS_LAST_FROM = 64


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


def _offset_dtype(largest: int) -> torch.dtype:
    """The smallest integer dtype that holds offsets ``0 .. largest``."""
    return next(d for d in _OFFSET_DTYPES if largest <= torch.iinfo(d).max)


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
        source = x
        if x.dim() == 4 and x.shape[1] >= _CHANNELS_LAST_FROM and x.device.type == "cpu":
            source = x.contiguous(memory_format=torch.channels_last)
        pooled, indices = torch.ops.aten.max_pool2d_with_indices(source, kernel, stride, padding)
        width = x.shape[-1]
        starts = _window_starts(pooled.shape[-2:], width, stride, padding, x.device)
        largest = (kernel[0] - 1) * width + kernel[1] - 1
        offsets = indices.sub_(starts).to(_offset_dtype(largest))
        if source is not x:  # back to the layout of x, as nn.MaxPool2d returns it
            pooled = pooled.contiguous(memory_format=_memory_format(x))
            offsets = offsets.contiguous()
        ctx.save_for_backward(offsets)
        ctx.window = kernel, stride, padding
        ctx.input_shape, ctx.input_dtype = x.shape, x.dtype
        return pooled

    @staticmethod
    def backward(ctx: Any, grad_pooled: Tensor) -> tuple:
        (offsets,) = ctx.saved_tensors
        kernel, stride, padding = ctx.window
        width = ctx.input_shape[-1]
        starts = _window_starts(offsets.shape[-2:], width, stride, padding, offsets.device)
        indices = offsets.long().add_(starts)
        # the backward kernel reads its input's shape and dtype only: a stride-0 stand-in
        shape_of_input = grad_pooled.new_empty((), dtype=ctx.input_dtype).expand(ctx.input_shape)
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(
            grad_pooled, shape_of_input, kernel, stride, padding, (1, 1), False, indices
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
