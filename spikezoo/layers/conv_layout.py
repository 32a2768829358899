"""The memory layout a convolution runs in, where another one trains faster and computes the same.

A depthwise convolution (one filter per channel) with a large kernel back-propagates much faster
channels-last than in PyTorch's default NCHW layout on the CPU: oneDNN's NCHW path for its
gradients is slow. Measured on the 2-core AMD EPYC VM of ``docs/benchmarks.md`` (2026-12-05,
forward + backward of one 7x7 depthwise convolution of spikes, float32, median of 11 calls),
NCHW against channels-last with the copies there and back:

========================  ========  ==============
input                     NCHW, ms  channels-last
========================  ========  ==============
``[1, 96, 112, 112]``     24.4      19.8
``[1, 192, 56, 56]``      12.7      7.1
``[1, 384, 28, 28]``      7.8       3.9
``[1, 24, 64, 64]``       2.7       1.4
``[1, 96, 16, 16]``       0.64      0.56
========================  ========  ==============

A 3x3 depthwise convolution at 8 to 16 pixels was no faster (0.83-1.06x), grouped
convolutions of 64 channels a group were slower (0.69-0.89x), and so was the forward pass alone
of every one of them: so only a training forward of a depthwise convolution with a kernel of
at least :data:`MIN_KERNEL` moves. Each output is the same sum of ``kernel x kernel`` products
of one channel in either layout: the outputs were bit for bit equal in float32, bfloat16 and
float64 there, and so was ``dL/dx`` in float32 and bfloat16 (float64's, and ``dL/dw``, a sum
over every position, are added in another order). The output is copied back to NCHW, so the
layers after it run as before.

The copies cost memory while the convolution back-propagates: Meta-SpikeFormer's
:class:`~spikezoo.layers.SepConv` calls its depthwise convolution through :func:`convolve`
(``sdt_v2_8_384``'s training step, T=1, 224 px: 1.055x faster, peak 183.6 -> 185.9 MiB), while
E-SpikeFormer's depthwise ``ConvBN`` does not: there it was 1.01-1.05x faster for a peak 10 %
higher (``sdt_v3_t``, 128 px: 20.5 -> 22.6 MiB).

"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spikezoo.neurons.saved_spikes import mark_spikes, marked_as_spikes

__all__ = ["MIN_KERNEL", "convolve"]

#: The smallest kernel side of a depthwise convolution that runs channels-last in training.
MIN_KERNEL = 7


def convolve(conv: nn.Module, x: Tensor) -> Tensor:
    """``conv(x)`` for ``x [N, C, H, W]``, laid out as ``x``; a depthwise ``nn.Conv2d`` with a
    kernel of :data:`MIN_KERNEL` or more runs on a channels-last copy of ``x`` in a CPU
    training forward (gradients recorded, outside ``torch.compile``), where its backward pass
    is faster. A copy of marked spikes is marked (:func:`~spikezoo.neurons.mark_spikes`).
    """
    if not _faster_channels_last(conv, x):
        return conv(x)
    copy = x.contiguous(memory_format=torch.channels_last)
    if marked_as_spikes(x):
        mark_spikes(copy)
    return conv(copy).contiguous()


def _faster_channels_last(conv: nn.Module, x: Tensor) -> bool:
    return (
        isinstance(x, Tensor)  # not a torch.fx proxy: a traced graph records the plain call
        and x.dim() == 4
        and x.device.type == "cpu"
        and isinstance(conv, nn.Conv2d)  # not a module put in its place (binary expansion)
        and conv.groups == conv.in_channels == conv.out_channels
        and min(conv.kernel_size) >= MIN_KERNEL
        and torch.is_grad_enabled()
        and (x.requires_grad or conv.weight.requires_grad)
        and not torch.compiler.is_compiling()
        and not x.is_contiguous(memory_format=torch.channels_last)
    )
