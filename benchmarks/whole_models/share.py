"""How much of a call's time is spent outside convolutions and matrix products.

One call runs under ``torch.profiler`` (CPU activity). The time inside convolutions and matrix
products is the summed duration of the outermost ``aten`` operators that compute them:
``aten::*conv*`` (``conv2d``, ``convolution``, ``convolution_backward``, ...), ``aten::mm``,
``aten::bmm``, ``aten::addmm``, ``aten::baddbmm``; what they call inside (oneDNN's kernels) is
not counted twice. The share outside is ``1 - inside / wall``, where ``wall`` is the call's
time under the profiler: everything else (neurons, BatchNorm, pooling, element-wise and layout
work, the optimizer step) and the profiler's own cost per operator, which makes the share an
upper bound. That cost is tens of microseconds per operator and per named range (spikezoo's C
kernels are ranges), most of the outside time of a model of many small operators (E-SpikeFormer
at 128 px); so the share is also given against the call's unprofiled median time from the
timing rounds (``share_outside_timed``, ``1 - inside / median``), which leaves the profiler's
cost out (and is a little low where the profiler slows the convolutions themselves). On CUDA
the operators' CPU time is their launch, not their run: the share is measured on the CPU
only.

Where the outside time goes: the self time (own time, children excluded) of every operator not
inside a convolution or matrix product, summed by name; the largest are reported, so a table
can say which remaining operation dominates (a compiled neuron kernel appears as its
``CompiledFxGraph`` call, the neurons' autograd functions as ``MultiStepDynamics``).
"""

from __future__ import annotations

import collections
import re
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

#: How many of the largest operators outside convolutions and matmuls are reported.
TOP_OUTSIDE = 8

#: The operators counted as convolution or matrix product.
CONV_MATMUL = re.compile(r"aten::(\w*conv\w*|mm|bmm|addmm|baddbmm)")


def _counted(event) -> bool:
    return CONV_MATMUL.fullmatch(event.name) is not None


def _outermost(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if _counted(parent):
            return False
        parent = parent.cpu_parent
    return True


def _operator_name(name: str) -> str:
    """``name``, with a compiled graph's hash cut off (``## Call CompiledFxGraph <hash> ##``)."""
    return "compiled graph (torch.compile)" if "CompiledFxGraph" in name else name


def time_outside_conv_matmul(call: Callable[[], object], median_s: float) -> dict:
    """Profile one ``call()``: its wall time, the time in convolutions and matrix products, the
    share outside them (a fraction of the profiled wall time, and of ``median_s``, the call's
    unprofiled median time), and the :data:`TOP_OUTSIDE` operators with the most self time
    outside them (``top_outside``: ``[name, seconds]``, largest first).
    """
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        call()
        wall_s = time.perf_counter() - start
    inside_us = 0.0
    outside_us: collections.Counter[str] = collections.Counter()
    for event in prof.events():
        if not _outermost(event):
            continue
        if _counted(event):
            inside_us += event.time_range.elapsed_us()
        else:
            outside_us[_operator_name(event.name)] += event.self_cpu_time_total
    inside_s = 1e-6 * inside_us
    return dict(
        wall_s=wall_s,
        conv_matmul_s=inside_s,
        share_outside=max(0.0, 1 - inside_s / wall_s),
        share_outside_timed=max(0.0, 1 - inside_s / median_s),
        top_outside=[[name, 1e-6 * us] for name, us in outside_us.most_common(TOP_OUTSIDE)],
    )


def available(device: torch.device) -> bool:
    """Whether the share is measured on ``device`` (the CPU only)."""
    return device.type == "cpu"
