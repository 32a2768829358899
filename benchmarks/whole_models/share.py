"""How much of a call's time is spent outside convolutions and matrix products.

Three calls run under ``torch.profiler`` (CPU activity), and the one of median wall time is
reported. The time inside convolutions and matrix products is the summed duration of the
outermost ``aten`` operators that compute them: ``aten::*conv*`` (``conv2d``, ``convolution``,
``convolution_backward``, ...), ``aten::mm``, ``aten::bmm``, ``aten::addmm``,
``aten::baddbmm``; what they call inside (oneDNN's kernels) is not counted twice. The share
outside is ``1 - inside / wall``, where ``wall`` is the call's time under the profiler:
everything else (neurons, BatchNorm, pooling, element-wise and layout work, the optimizer step)
and the profiler's own cost per operator, which makes the share an upper bound. That cost comes
with every operator and named range (spikezoo's C kernels are ranges; below), most of the
outside time of a model of many small operators (E-SpikeFormer at 128 px); so the share is also
given against the call's unprofiled median time from the timing rounds
(``share_outside_timed``, ``1 - inside / median``), which leaves the profiler's cost out (and
is a little low where the profiler slows the convolutions themselves). On CUDA the operators'
CPU time is their launch, not their run: the share is measured on the CPU only.

Where the outside time goes: the self time (own time, children excluded) of every operator not
inside a convolution or matrix product, summed by name; the largest are reported, so a table
can say which remaining operation dominates (a compiled neuron kernel appears as its
``CompiledFxGraph`` call, the neurons' autograd functions as ``MultiStepDynamics``).

And by kind (``split``), which adds up to the profiled time outside:

- ``kernels_s``: spikezoo's C kernels (ranges named ``spikezoo::*``);
- ``compaction_s``: spike compaction's own work in its saved-tensor hooks (:data:`COMPACTION`:
  the hooks' Python, and NumPy's packing and unpacking where it runs; the C kernels and PyTorch
  operators they call count as kernels and operators);
- ``data_operators_s``: PyTorch operators that read or write values, with ``data_bytes``, the
  least traffic their input shapes imply (every tensor input read once, and one output the
  size of the largest input written, or the first input where the operator works in place;
  an upper bound on a reduction's, whose output is small; an operator called by another, as
  ``relu`` calls ``clamp_min``, is its caller's traffic), so that ``data_bytes /
  data_operators_s`` can be held against the machine's memory bandwidth;
- ``metadata_operators_s``: PyTorch operators that only allocate or make views
  (:data:`METADATA`): a cost per call;
- ``ranges_s``: the self time of every other named range: autograd functions' Python
  (``_BatchNormFire``), the autograd engine's nodes, the optimizer's step;
- ``between_s``: the time under no range at all, the Python between operators.

The profiler's own cost lands in all of them, and is not a constant per event: a loop of 500
``torch.neg`` calls took 0.8 us more per call under it on 1-value tensors, 15 us more on
300k-value tensors, which PyTorch splits over its threads (2 cores, 2026-12-06). So the kinds
are given as measured, next to the time outside of the unprofiled median.
"""

from __future__ import annotations

import collections
import math
import re
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

#: Calls profiled; the one of median wall time is reported (a single profiled call of a
#: training step on the 2-core VM took from 1.0 to 1.4 s in runs of the same code).
PROFILED_CALLS = 3

#: How many of the largest operators outside convolutions and matmuls are reported.
TOP_OUTSIDE = 8

#: The operators counted as convolution or matrix product.
CONV_MATMUL = re.compile(r"aten::(\w*conv\w*|mm|bmm|addmm|baddbmm)")

#: The kinds of time outside convolutions and matrix products, by what the profiler names.
KINDS = ("kernels", "compaction", "data_operators", "metadata_operators", "ranges")

#: The ranges of spike compaction's saved-tensor hooks (``spikezoo.neurons.saved_spikes``).
COMPACTION = ("spikezoo::pack_saved_tensor", "spikezoo::unpack_saved_tensor")

#: PyTorch operators that allocate, or make a view or an alias, without reading the values.
METADATA = re.compile(
    r"aten::(empty\w*|\w*view\w*|as_strided|expand\w*|\w*reshape\w*|(un)?squeeze_?|permute"
    r"|transpose_?|t|slice|select|narrow|split\w*|chunk|unbind|unflatten|flatten|detach_?|alias"
    r"|lift_fresh|resize_|contiguous|to|type_as|result_type|set_|is_nonzero|item"
    r"|_local_scalar_dense|new_empty\w*)"
)

#: What ``split`` holds: seconds and calls of each kind, the data operators' least traffic, and
#: the time between operators.
SPLIT_KEYS = (
    *(f"{kind}_{unit}" for kind in KINDS for unit in ("s", "calls")), "data_bytes", "between_s",
)  # fmt: skip

#: Bytes per value of the dtypes ``torch.profiler`` records, by the name it gives them.
DTYPE_BYTES = {
    "double": 8, "float": 4, "c10::Half": 2, "c10::BFloat16": 2, "long int": 8, "int": 4,
    "short int": 2, "signed char": 1, "unsigned char": 1, "bool": 1,
}  # fmt: skip


def _counted(event) -> bool:
    return CONV_MATMUL.fullmatch(event.name) is not None


def _has_ancestor(event, test: Callable[[object], bool]) -> bool:
    """Whether an event that encloses ``event`` (its caller, or theirs) passes ``test``."""
    parent = event.cpu_parent
    while parent is not None:
        if test(parent):
            return True
        parent = parent.cpu_parent
    return False


def _outermost(event) -> bool:
    return not _has_ancestor(event, _counted)


def _operator_name(name: str) -> str:
    """``name``, with a compiled graph's hash cut off (``## Call CompiledFxGraph <hash> ##``)."""
    return "compiled graph (torch.compile)" if "CompiledFxGraph" in name else name


def time_outside_conv_matmul(call: Callable[[], object], median_s: float) -> dict:
    """Profile :data:`PROFILED_CALLS` calls of ``call()``; of the one of median wall time: that
    time, the time in convolutions and matrix products, the share outside them (a fraction of
    the profiled wall time, and of ``median_s``, the call's unprofiled median time), the
    :data:`TOP_OUTSIDE` operators with the most self time outside them (``top_outside``:
    ``[name, seconds]``, largest first), and that time by kind (``split``, :data:`SPLIT_KEYS`:
    its seconds add up to the profiled time outside).
    """
    runs = []
    for _ in range(PROFILED_CALLS):
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            start = time.perf_counter()
            call()
            wall_s = time.perf_counter() - start
        runs.append((wall_s, prof))
    wall_s, prof = sorted(runs, key=lambda run: run[0])[len(runs) // 2]
    inside_us = roots_us = 0.0
    outside_us: collections.Counter[str] = collections.Counter()
    split: collections.Counter[str] = collections.Counter()
    for event in prof.events():
        if event.cpu_parent is None:
            roots_us += event.time_range.elapsed_us()
        if not _outermost(event):
            continue
        if _counted(event):
            inside_us += event.time_range.elapsed_us()
            continue
        outside_us[_operator_name(event.name)] += event.self_cpu_time_total
        kind = _kind(event.name)
        split[f"{kind}_s"] += 1e-6 * event.self_cpu_time_total
        split[f"{kind}_calls"] += 1
        if kind == "data_operators" and not _under_data_operator(event):
            split["data_bytes"] += _least_bytes(event)
    inside_s = 1e-6 * inside_us
    split["between_s"] = max(0.0, wall_s - 1e-6 * roots_us)
    return dict(
        wall_s=wall_s,
        conv_matmul_s=inside_s,
        share_outside=max(0.0, 1 - inside_s / wall_s),
        share_outside_timed=max(0.0, 1 - inside_s / median_s),
        top_outside=[[name, 1e-6 * us] for name, us in outside_us.most_common(TOP_OUTSIDE)],
        split={key: split[key] for key in SPLIT_KEYS},
    )


def _kind(name: str) -> str:
    """Which kind of time outside (the module's docstring) an event of this name is."""
    if name in COMPACTION:
        return "compaction"
    if name.startswith("spikezoo::"):
        return "kernels"
    if METADATA.fullmatch(name):
        return "metadata_operators"
    return "data_operators" if name.startswith("aten::") else "ranges"


def _under_data_operator(event) -> bool:
    """Whether a PyTorch operator that moves data called this one (``relu`` calls
    ``clamp_min``): its traffic is the caller's, counted once."""
    return _has_ancestor(event, lambda parent: _kind(parent.name) == "data_operators")


def _least_bytes(event) -> int:
    """The least traffic of a PyTorch operator from its recorded input shapes and dtypes."""
    sizes = [
        math.prod(shape) * DTYPE_BYTES.get(dtype, 4)
        for shape, dtype in zip(event.input_shapes, event.input_dtypes, strict=False)
        if shape  # a scalar or an argument that is not a tensor: recorded as []
    ]
    if not sizes:
        return 0
    written = sizes[0] if event.name.endswith("_") else max(sizes)
    return sum(sizes) + (0 if event.name == "aten::copy_" else written)


def available(device: torch.device) -> bool:
    """Whether the share is measured on ``device`` (the CPU only)."""
    return device.type == "cpu"
