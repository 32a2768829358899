"""Where spikezoo's time goes: the machine's limits and each heavy layer's share of its roof.

The limits: memory bandwidth (a large copy and add) and the matmul and 3x3-conv FLOP rates in
float32 and bfloat16, each the fastest block of ``torch.utils.benchmark``'s
``blocked_autorange``. Per leaf module of spikezoo's eager model (forward, eval): time (forward
hooks, median of 3 passes; per-module timing within one pass is what a ``Timer`` cannot give),
FLOPs (``torch.utils.flop_counter``), the bytes of its inputs, outputs and parameters (the least
it must move) and the achieved fraction of ``min(peak FLOP/s, intensity x bandwidth)``.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.benchmark import Timer

from spikezoo.neurons import set_backend
from whole_models.calls import autocast

#: (table column, key of :func:`machine_limits`)
LIMITS = [
    ("bandwidth copy GB/s", "bandwidth_copy_Bps"), ("bandwidth add GB/s", "bandwidth_add_Bps"),
    ("matmul fp32 GFLOP/s", "matmul_fp32_flops"), ("matmul bf16 GFLOP/s", "matmul_bf16_flops"),
    ("conv fp32 GFLOP/s", "conv_fp32_flops"), ("conv bf16 GFLOP/s", "conv_bf16_flops"),
]  # fmt: skip


def fastest_s(call: Callable[[], object], threads: int, min_run_time: float = 0.5) -> float:
    """The shortest per-call time of ``call`` over ``blocked_autorange``'s blocks."""
    timer = Timer("call()", globals={"call": call}, num_threads=threads)
    return min(timer.blocked_autorange(min_run_time=min_run_time).times)


def machine_limits(device: torch.device, quick: bool, threads: int) -> dict:
    """Memory bandwidth (copy, add) and matmul/conv FLOP rates in float32 and bfloat16."""
    cuda = device.type == "cuda"
    numel = (2**28 if cuda else 2**25) // (4 if quick else 1)
    a, b, out = (torch.rand(numel, device=device) for _ in range(3))
    nbytes = a.nbytes
    copy_s = fastest_s(lambda: out.copy_(a), threads)
    add_s = fastest_s(lambda: torch.add(a, b, out=out), threads)
    limits = dict(bandwidth_copy_Bps=2 * nbytes / copy_s, bandwidth_add_Bps=3 * nbytes / add_s)
    limits["bandwidth_Bps"] = max(limits["bandwidth_copy_Bps"], limits["bandwidth_add_Bps"])
    n = 8192 if cuda else 1024
    batch, channels, size = (64, 256, 56) if cuda else ((2, 128, 28) if quick else (4, 256, 28))
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        matrix = torch.randn(n, n, device=device, dtype=dtype)
        limits[f"matmul_{name}_flops"] = 2 * n**3 / fastest_s(lambda m=matrix: m @ m, threads)
        image = torch.randn(batch, channels, size, size, device=device, dtype=dtype)
        weight = torch.randn(channels, channels, 3, 3, device=device, dtype=dtype)
        conv_s = fastest_s(lambda i=image, w=weight: F.conv2d(i, w, padding=1), threads)
        limits[f"conv_{name}_flops"] = 2 * batch * channels * channels * 9 * size * size / conv_s
    limits["shapes"] = dict(
        stream_bytes=nbytes, matmul_n=n, conv_input=[batch, channels, size, size], conv_kernel=3
    )
    return limits


def _nbytes(value) -> int:
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, list | tuple):
        return sum(_nbytes(v) for v in value)
    return 0


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _flop_counts(model: nn.Module, x: Tensor, dtype: str, device: torch.device) -> dict:
    """FLOPs per module path of one forward, counted on a copy with eager neurons."""
    from torch.utils.flop_counter import FlopCounterMode

    # compiled neurons hide their FLOPs from the counter
    eager = set_backend(copy.deepcopy(model), "torch")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), autocast(device, dtype):
        eager(x)
    return counter.get_flop_counts()


def _split(values: list[float], parts: int) -> list[list[float]]:
    """``values`` cut into ``parts`` equal consecutive chunks (a module called k times per pass)."""
    size = len(values) // parts
    return [values[p * size : (p + 1) * size] for p in range(parts)]


def _leaf_times(
    model: nn.Module, x: Tensor, dtype: str, device: torch.device, passes: int = 3
) -> tuple[dict[str, list[float]], dict[str, int], list[float]]:
    """Per leaf module: its seconds in each pass, the bytes it moves; and each pass's total."""
    leaves = {name: m for name, m in model.named_modules() if name and not list(m.children())}
    starts: dict[str, float] = {}
    times: dict[str, list[float]] = {name: [] for name in leaves}
    moved: dict[str, int] = {}

    def pre(name):
        def hook(module, inputs):
            _synchronize(device)
            starts[name] = time.perf_counter()

        return hook

    def post(name):
        def hook(module, inputs, output):
            _synchronize(device)
            times[name].append(time.perf_counter() - starts[name])
            params = sum(_nbytes(t) for t in module.parameters(recurse=False))
            params += sum(_nbytes(t) for t in module.buffers(recurse=False))
            moved[name] = _nbytes(inputs) + _nbytes(output) + params

        return hook

    def run() -> float:
        _synchronize(device)
        start = time.perf_counter()
        with torch.no_grad(), autocast(device, dtype):
            model(x)
        _synchronize(device)
        return time.perf_counter() - start

    run()  # warm-up (compiles the neurons' loops on first use)
    handles = [m.register_forward_pre_hook(pre(n)) for n, m in leaves.items()]
    handles += [m.register_forward_hook(post(n)) for n, m in leaves.items()]
    try:
        totals = [run() for _ in range(passes)]
    finally:
        for handle in handles:
            handle.remove()
    per_pass = {
        name: [sum(chunk) for chunk in _split(ts, passes)] for name, ts in times.items() if ts
    }
    return per_pass, moved, totals


def layer_profile(
    model: nn.Module, x: Tensor, dtype: str, device: torch.device, limits: dict, top: int
) -> dict:
    """Time, FLOPs, bytes and roofline fraction of the heaviest leaf modules of one forward."""
    model.eval()
    flop_counts = _flop_counts(model, x, dtype, device)
    per_pass, moved, totals = _leaf_times(model, x, dtype, device)
    modules = dict(model.named_modules())
    root = type(model).__name__
    bandwidth = limits["bandwidth_Bps"]
    rows = []
    for name, seconds_per_pass in per_pass.items():
        seconds = statistics.median(seconds_per_pass)
        module = modules[name]
        flops = int(sum(flop_counts.get(f"{root}.{name}", {}).values()))
        kind = "conv" if isinstance(module, nn.Conv2d) else "matmul"
        peak_flops = limits[f"{kind}_{dtype}_flops"]
        nbytes = moved.get(name, 0)
        if flops:
            attainable = min(peak_flops, flops / nbytes * bandwidth) if nbytes else peak_flops
            fraction = flops / seconds / attainable
            bound = "compute" if attainable >= peak_flops else "memory"
        else:
            fraction = nbytes / seconds / bandwidth
            bound = "memory"
        rows.append(
            dict(
                module=name, type=type(module).__name__, time_s=seconds, flops=flops, bytes=nbytes,
                gflops_per_s=flops / seconds / 1e9, gbytes_per_s=nbytes / seconds / 1e9,
                intensity=flops / nbytes if nbytes else None, bound=bound,
                fraction_of_roof=fraction,
            )
        )  # fmt: skip
    rows.sort(key=lambda r: r["time_s"], reverse=True)
    by_type: dict[str, float] = {}
    for row in rows:
        by_type[row["type"]] = by_type.get(row["type"], 0.0) + row["time_s"]
    return dict(
        dtype=dtype,
        forward_s=statistics.median(totals),
        leaf_time_s=sum(r["time_s"] for r in rows),
        total_flops=int(sum(sum(v.values()) for k, v in flop_counts.items() if k == "Global")),
        time_by_type_s=dict(sorted(by_type.items(), key=lambda kv: -kv[1])),
        layers=rows[:top],
    )
