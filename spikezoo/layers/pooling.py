"""Max-pooling that keeps little for backward: window offsets instead of int64 indices.

``nn.MaxPool2d`` in training saves its input (a float tensor the size of the input, which its
backward reads only for the shape) and the position of each maximum as ``int64``: 8 bytes per
output value, twice a float32 output. :class:`MaxPool2d` computes the same forward pass with the
same kernel and saves only where in its window each maximum lies, as an offset from the
window's first element in the smallest integer dtype that holds it: for a 3x3 window, ``int8``
on rows up to 62 values wide, ``int16`` up to 16,382, so 1 or 2 bytes per output value.
Backward restores the ``int64`` indices from the offsets and runs the same backward kernel, so
the gradients are bit for bit those of ``nn.MaxPool2d``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

__all__ = ["MaxPool2d", "max_pool2d"]

_OFFSET_DTYPES = (torch.int8, torch.int16, torch.int32)


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
        pooled, indices = torch.ops.aten.max_pool2d_with_indices(x, kernel, stride, padding)
        width = x.shape[-1]
        starts = _window_starts(pooled.shape[-2:], width, stride, padding, x.device)
        largest = (kernel[0] - 1) * width + kernel[1] - 1
        offsets = indices.sub_(starts).to(_offset_dtype(largest))
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


def max_pool2d(
    x: Tensor, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
) -> Tensor:  # fmt: skip
    """``F.max_pool2d(x, kernel_size, stride, padding)``, ``[N, C, H, W]`` -> ``[N, C, H', W']``,
    saving window offsets for backward when gradients are recorded (see the module docstring).

    ``x`` may also be ``[C, H, W]``. Inside ``torch.compile`` or ``torch.fx`` tracing it is
    ``F.max_pool2d``.
    """
    compact = (
        isinstance(x, Tensor)  # not a torch.fx proxy
        and x.dim() in (3, 4)
        and x.requires_grad
        and torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
    )
    if not compact:
        return F.max_pool2d(x, kernel_size, stride, padding)
    kernel = _pair(kernel_size)
    return _MaxPool2dOffsets.apply(x, kernel, _pair(stride or kernel), _pair(padding))


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
