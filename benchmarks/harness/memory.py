"""The peak memory of one call in this process.

On CUDA: ``torch.cuda.max_memory_allocated`` above what was allocated when the call began. On a
CPU: the allocation and free events that PyTorch's CPU allocator reports to ``torch.profiler``
(``profile_memory=True``), summed in time order, peak above the start. This counts every tensor
allocation, those of compiled (inductor) kernels included, and is deterministic, unlike the
resident-set size (which depends on what glibc keeps mapped: for that, see
:mod:`harness.process`); it leaves out Python objects and oneDNN's scratch memory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["METHOD", "peak_allocated"]

METHOD = {
    "cuda": "torch.cuda.max_memory_allocated above the start",
    "cpu": "CPU allocator events (torch.profiler profile_memory), peak above the start",
}


def peak_allocated(call: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated during ``call()`` above what was allocated when it began."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        call()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    events = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and str(event.device_type()).endswith("CPU")
    )
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak
