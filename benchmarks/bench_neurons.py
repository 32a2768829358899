"""Multi-step LIF on the CPU: spikezoo against spikingjelly and snnTorch, time and memory.

Every implementation runs the same neuron over the same random float32 input ``x [T, N]``:
LIF with tau=2, v_threshold=1, hard reset to 0, sigmoid surrogate (alpha=4), detach_reset=True,
membrane at rest (0) at t=0. One measured call is a forward pass plus the backward pass
``torch.autograd.grad(spikes, x, g)`` for a fixed random ``g``.

Implementations (``--impls``):

- ``spikezoo-torch``: ``spikezoo.neurons.MultiStepLIF(backend="torch")`` (eager loops in one
  custom autograd function that saves the charged membrane, one ``[N]`` tensor per step);
- ``spikezoo-inductor``: the same with ``backend="inductor"`` (``"auto"`` picks it too); the
  loops are compiled by ``torch.compile`` on the first call, which the warm-up absorbs and which
  is reported on its own;
- ``spikingjelly``: ``neuron.LIFNode(step_mode="m", detach_reset=True,
  surrogate_function=surrogate.Sigmoid())``, its default CPU path, ``reset()`` before each call;
- ``snntorch``: ``snn.Leaky(beta=0.5, reset_mechanism="zero", spike_grad=sigmoid(slope=4))``
  stepped in a Python loop over T (the snnTorch idiom). snnTorch does not scale the input by
  ``1/tau`` (``U = beta * V + I``), so it is fed ``x / tau`` (prepared outside the timing,
  like a weight absorbing the constant); its gradient w.r.t. ``x`` is then ``grad / tau``.
  What still differs: snnTorch fires on ``U > 1`` (spikingjelly/spikezoo: ``H >= 1``), and
  ``0.5 * V + 0.5 * x`` rounds differently from ``V + (x - V) * 0.5`` in float32, so a few
  membranes within an ulp of the threshold may flip; the script reports the agreement.

Time: every warm-up and measured round runs each implementation once, in a rotating order, so
background load hits all of them alike; the table gives the median (and min/max) of the rounds
and the ratio ``spikezoo / peer`` of the medians (below 1: spikezoo is faster).

Memory: (a) bytes of the tensors autograd keeps for backward, seen by
``torch.autograd.graph.saved_tensors_hooks`` (unique storages, so views and repeats count once);
(b) the peak resident memory of one forward+backward in a fresh process per implementation
(median of ``--rss-runs`` processes): the high-water mark after the call minus the one just
before it, with the input already created and, on Linux, the high-water mark reset first
(``/proc/self/clear_refs``) so that imports and a smaller warm-up call (which loads compiled
code) do not mask the call's own peak. On Linux the mark is ``VmHWM`` of ``/proc/self/status``;
``resource.getrusage().ru_maxrss`` (the fallback elsewhere, reported alongside) also remembers
the RSS a process had when it was forked, so the children are started through a small launcher
process rather than forked from this large one.

Run ``python benchmarks/bench_neurons.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import weakref

import torch

TAU = 2.0
V_THRESHOLD = 1.0
V_RESET = 0.0
ALPHA = 4.0
IMPLS = ("spikezoo-torch", "spikezoo-inductor", "spikingjelly", "snntorch")
SPIKEZOO = ("spikezoo-torch", "spikezoo-inductor")
CHILD_MARK = "BENCH_CHILD_RESULT "
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"
MiB = 2**20
WARMUP_N = 65536  # neurons in the RSS child's warm-up call (above ATen's parallel grain size)


# ----------------------------------------------------------------------------- implementations


class Impl:
    """One implementation: ``prepare`` turns the shared input into its leaf, ``forward`` runs it."""

    name = ""

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach().clone().requires_grad_()

    def grad_to_x(self, grad: torch.Tensor) -> torch.Tensor:
        """The gradient w.r.t. the shared input ``x``, from the gradient w.r.t. the leaf."""
        return grad

    def reset(self) -> None:
        """Clear state between calls (outside the timed region)."""

    def forward(self, leaf: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class SpikezooImpl(Impl):
    def __init__(self, backend: str) -> None:
        from spikezoo.neurons import MultiStepLIF

        self.name = f"spikezoo-{backend}"
        self.module = MultiStepLIF(
            tau=TAU,
            v_threshold=V_THRESHOLD,
            v_reset=V_RESET,
            surrogate="sigmoid",
            alpha=ALPHA,
            detach_reset=True,
            backend=backend,
        )

    def forward(self, leaf: torch.Tensor) -> torch.Tensor:
        return self.module(leaf)


class SpikingjellyImpl(Impl):
    name = "spikingjelly"

    def __init__(self) -> None:
        from spikingjelly.activation_based import neuron, surrogate

        self.module = neuron.LIFNode(
            tau=TAU,
            decay_input=True,
            v_threshold=V_THRESHOLD,
            v_reset=V_RESET,
            surrogate_function=surrogate.Sigmoid(alpha=ALPHA),
            detach_reset=True,
            step_mode="m",
        )

    def reset(self) -> None:
        self.module.reset()

    def forward(self, leaf: torch.Tensor) -> torch.Tensor:
        return self.module(leaf)


class SnntorchImpl(Impl):
    name = "snntorch"

    def __init__(self) -> None:
        import snntorch as snn
        from snntorch import surrogate

        # U[t] = beta * V[t-1] + I[t]; reset_mechanism="zero" with the default reset_delay=True
        # zeroes V after a spike with a detached reset signal (= detach_reset, hard reset to 0).
        self.module = snn.Leaky(
            beta=1.0 - 1.0 / TAU,
            threshold=V_THRESHOLD,
            spike_grad=surrogate.sigmoid(slope=ALPHA),
            reset_mechanism="zero",
        )

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return (x.detach() / TAU).requires_grad_()  # decay_input: the LIF charges by x / tau

    def grad_to_x(self, grad: torch.Tensor) -> torch.Tensor:
        return grad / TAU

    def forward(self, leaf: torch.Tensor) -> torch.Tensor:
        mem = self.module.reset_mem()
        spk_rec = []
        for step in range(leaf.shape[0]):
            spk, mem = self.module(leaf[step], mem)
            spk_rec.append(spk)
        return torch.stack(spk_rec)


def make_impl(name: str) -> Impl:
    if name in SPIKEZOO:
        return SpikezooImpl(name.removeprefix("spikezoo-"))
    if name == "spikingjelly":
        return SpikingjellyImpl()
    if name == "snntorch":
        return SnntorchImpl()
    raise ValueError(f"unknown implementation {name!r}; expected one of {IMPLS}")


# ----------------------------------------------------------------------------- measurements


def make_inputs(t: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x ~ N(1, 2^2)`` (about a third of the neurons fire per step) and ``g ~ N(0, 1)``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(t, n, generator=gen) * 2.0 + 1.0
    g = torch.randn(t, n, generator=gen)
    return x, g


def fwd_bwd(impl: Impl, leaf: torch.Tensor, g: torch.Tensor):
    """One timed forward+backward; returns (seconds, spikes, gradient w.r.t. the leaf)."""
    impl.reset()
    start = time.perf_counter()
    spikes = impl.forward(leaf)
    (grad,) = torch.autograd.grad(spikes, leaf, g)
    return time.perf_counter() - start, spikes, grad


def saved_for_backward(impl: Impl, leaf: torch.Tensor) -> dict:
    """Bytes of the unique storages autograd holds for backward after one forward pass.

    A tensor packed for a graph branch that is dropped during the forward (e.g. a surrogate
    evaluated and then detached) is freed again, and its memory may be reused by a later saved
    tensor; only the packed tensors still alive at the end count, each storage once.
    """
    packed: list[weakref.ref] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        packed.append(weakref.ref(t))
        return t

    impl.reset()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        spikes = impl.forward(leaf)
    alive = [t for t in (ref() for ref in packed) if t is not None]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in alive}
    input_ptr = leaf.untyped_storage().data_ptr()
    del spikes, alive
    impl.reset()
    total = sum(storages.values())
    aliased = storages.get(input_ptr, 0)
    return {
        "saved_tensors_packed": len(packed),
        "saved_storages": len(storages),
        "saved_bytes": total,
        "saved_bytes_input_alias": aliased,
        "saved_bytes_extra": total - aliased,
    }


def maxrss_bytes() -> int:
    """``ru_maxrss`` in bytes: the peak RSS of this process, or of its parent at fork time."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def vm_hwm_bytes() -> int | None:
    """Linux ``VmHWM``: the peak RSS of this process's own address space (resettable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def dynamo_frames() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(sum(counters["frames"].values()))
    except Exception:
        return -1


def child_main(args: argparse.Namespace) -> None:
    """Fresh process: peak RSS of one forward+backward of ``args.child`` on ``[T, N]``."""
    torch.set_num_threads(args.threads)
    impl = make_impl(args.child)
    # A smaller warm-up call: lazy initialisation (thread pool, for inductor the compiled kernels
    # loaded from the on-disk cache the parent filled) happens here, not in the measured call.
    xs, gs = make_inputs(args.t, min(args.n, WARMUP_N), args.seed + 1)
    warm_s, *_ = fwd_bwd(impl, impl.prepare(xs), gs)
    del xs, gs
    x, g = make_inputs(args.t, args.n, args.seed)
    leaf = impl.prepare(x)
    del x
    gc.collect()
    frames = dynamo_frames()
    hwm_reset = reset_peak_rss()
    base, hwm_base = maxrss_bytes(), vm_hwm_bytes()
    seconds, spikes, grad = fwd_bwd(impl, leaf, g)
    peak, hwm_peak = maxrss_bytes(), vm_hwm_bytes()
    # ru_maxrss also keeps the peak RSS of exited threads and the RSS the process had when it
    # was forked (hence the launcher in run_child); VmHWM is this address space's own, reset
    # above. Both are reported; VmHWM is the headline figure where it exists.
    use_hwm = hwm_reset and hwm_base is not None and hwm_peak is not None
    result = {
        "impl": args.child,
        "peak_rss_delta_bytes": hwm_peak - hwm_base if use_hwm else peak - base,
        "peak_rss_counter": "VmHWM" if use_hwm else "ru_maxrss",
        "ru_maxrss_delta_bytes": peak - base,
        "ru_maxrss_baseline_bytes": base,
        "vm_hwm_baseline_bytes": hwm_base,
        "hwm_reset": hwm_reset,
        "warmup_first_call_s": warm_s,
        "measured_call_s": seconds,
        "recompiled_in_measured_call": dynamo_frames() != frames,
    }
    del spikes, grad
    print(CHILD_MARK + json.dumps(result), flush=True)


def run_child(name: str, t: int, n: int, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        name,
        "--t",
        str(t),
        "--n",
        str(n),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
    ]
    # Started through a small Python launcher: a process forked straight from this (large) one
    # would start with this one's RSS in its ru_maxrss.
    launcher = [sys.executable, "-c", LAUNCHER]
    proc = subprocess.run(
        launcher + cmd, capture_output=True, text=True, timeout=600, env=os.environ.copy()
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(CHILD_MARK):
            return json.loads(line[len(CHILD_MARK) :])
    tail = (proc.stdout + proc.stderr)[-2000:]
    return {"impl": name, "error": f"child exited with {proc.returncode}: {tail}"}


def measure_rss(name: str, t: int, n: int, args: argparse.Namespace) -> dict:
    """Median (and range) of the peak RSS delta over ``args.rss_runs`` fresh processes."""
    runs = [run_child(name, t, n, args) for _ in range(max(args.rss_runs, 1))]
    good = [r for r in runs if "error" not in r]
    if not good:
        return {"impl": name, "error": runs[-1]["error"], "runs": runs}
    deltas = [r["peak_rss_delta_bytes"] for r in good]
    return {
        "impl": name,
        "peak_rss_delta_bytes": statistics.median(deltas),
        "peak_rss_delta_min_bytes": min(deltas),
        "peak_rss_delta_max_bytes": max(deltas),
        "peak_rss_counter": good[0]["peak_rss_counter"],
        "hwm_reset": all(r["hwm_reset"] for r in good),
        "warmup_first_call_s": statistics.median(r["warmup_first_call_s"] for r in good),
        "recompiled_in_measured_call": any(r["recompiled_in_measured_call"] for r in good),
        "runs": runs,
    }


def check_agreement(impls: list[Impl], x: torch.Tensor, g: torch.Tensor) -> dict:
    """Spikes and input gradients of every implementation against a reference one."""
    outputs = {}
    for impl in impls:
        leaf = impl.prepare(x)
        _, spikes, grad = fwd_bwd(impl, leaf, g)
        outputs[impl.name] = (spikes.detach(), impl.grad_to_x(grad))
    names = [impl.name for impl in impls]
    ref = "spikingjelly" if "spikingjelly" in names else names[0]
    ref_spikes, ref_grad = outputs[ref]
    result = {"reference": ref, "firing_rate": ref_spikes.float().mean().item(), "impls": {}}
    for name, (spikes, grad) in outputs.items():
        result["impls"][name] = {
            "spikes_identical": bool(torch.equal(spikes, ref_spikes)),
            "spike_agreement": (spikes == ref_spikes).float().mean().item(),
            "grad_max_abs_diff": (grad - ref_grad).abs().max().item(),
            "grad_allclose": bool(torch.allclose(grad, ref_grad, rtol=1e-5, atol=1e-6)),
        }
    return result


def bench_case(t: int, n: int, impl_names: list[str], args: argparse.Namespace) -> dict:
    impls = [make_impl(name) for name in impl_names]
    x, g = make_inputs(t, n, args.seed)
    leaves = {impl.name: impl.prepare(x) for impl in impls}
    first_call, times = {}, {impl.name: [] for impl in impls}
    for w in range(max(args.warmup, 1)):
        for impl in impls:
            seconds, spikes, grad = fwd_bwd(impl, leaves[impl.name], g)
            del spikes, grad
            if w == 0:
                first_call[impl.name] = seconds
    for r in range(args.repeats):
        shift = r % len(impls)
        for impl in impls[shift:] + impls[:shift]:
            seconds, spikes, grad = fwd_bwd(impl, leaves[impl.name], g)
            del spikes, grad
            times[impl.name].append(seconds)
    del leaves
    gc.collect()

    agreement = check_agreement(impls, x, g)
    saved = {impl.name: saved_for_backward(impl, impl.prepare(x)) for impl in impls}
    del x, g
    gc.collect()
    rss = {}
    if args.rss_runs > 0:
        rss = {name: measure_rss(name, t, n, args) for name in impl_names}

    rows = {}
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    for name in impl_names:
        ts = times[name]
        row = {
            "median_ms": medians[name] * 1e3,
            "min_ms": min(ts) * 1e3,
            "max_ms": max(ts) * 1e3,
            "times_ms": [s * 1e3 for s in ts],
            "first_call_s": first_call[name],
            **saved[name],
            **agreement["impls"][name],
        }
        for sz in SPIKEZOO:
            if sz in times:
                row[f"ratio_{sz}"] = medians[sz] / medians[name]
                row[f"paired_ratio_{sz}"] = statistics.median(
                    a / b for a, b in zip(times[sz], ts, strict=True)
                )
        if name in rss:
            row["rss"] = rss[name]
        rows[name] = row
    return {
        "T": t,
        "N": n,
        "input_bytes": t * n * 4,
        "reference": agreement["reference"],
        "firing_rate": agreement["firing_rate"],
        "rows": rows,
    }


# ----------------------------------------------------------------------------- reporting


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for module in ("spikezoo", "spikingjelly", "snntorch"):
        try:
            mod = __import__(module)
            out[module] = getattr(mod, "__version__", "?")
        except ImportError:
            out[module] = None
    if out.get("spikingjelly") == "?":
        from importlib.metadata import version

        out["spikingjelly"] = version("spikingjelly")
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mb(nbytes: float) -> str:
    return f"{nbytes / MiB:.1f}"


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# Multi-step LIF forward+backward on the CPU",
        "",
        f"- date: {env['date']}; machine: {env['cpu']}, {env['cpu_count']} logical CPUs, "
        f"torch threads: {env['threads']}; load average at start/end: "
        f"{env['loadavg_start']} / {env['loadavg_end']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
        f"- neuron: LIF tau={TAU}, v_threshold={V_THRESHOLD}, hard reset to {V_RESET}, "
        f"sigmoid surrogate alpha={ALPHA}, detach_reset=True; x ~ N(1, 2^2) float32",
        f"- time: forward + backward, median of {env['repeats']} interleaved rounds after "
        f"{env['warmup']} warm-up rounds; ratio = spikezoo median / this median "
        "(below 1: spikezoo is faster)",
        "- saved for bwd: unique storages packed by torch.autograd.graph.saved_tensors_hooks "
        "during the forward pass",
        f"- peak RSS delta: peak resident memory of one forward+backward in a fresh process "
        f"(input already created, high-water mark reset first), median (min-max) of "
        f"{env['rss_runs']} processes; it includes the returned spikes and input gradient",
        f"- torch.compile cache: {env['compile_cache']}",
    ]
    busy = env["loadavg_start"][0]
    if busy > 0.5 * (env["cpu_count"] or 1):
        lines.append(
            f"- WARNING: the machine was busy before this run started (1-min load average "
            f"{busy} on {env['cpu_count']} CPUs): with other processes on the cores, every "
            "multi-threaded kernel can stall for a scheduler time slice, so the timings are "
            "noisy and inflated; compare the min column, rerun on an idle machine, or try "
            "--threads 1"
        )
    lines.append("")
    for case in report["cases"]:
        rows = case["rows"]
        lines += [
            f"## T={case['T']}, N={case['N']:,} (input {mb(case['input_bytes'])} MiB; "
            f"firing rate {case['firing_rate']:.3f}; spikes compared with {case['reference']})",
            "",
        ]
        ratio_cols = [sz for sz in SPIKEZOO if sz in rows]
        header = ["implementation", "median ms", "min-max ms"]
        header += [f"{sz} / this" for sz in ratio_cols]
        header += ["saved for bwd MiB", "peak RSS delta MiB", "spikes vs ref", "max abs dx diff"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, row in rows.items():
            rss = row.get("rss", {})
            if "peak_rss_delta_bytes" in rss:
                rss_text = (
                    f"{mb(rss['peak_rss_delta_bytes'])} ({mb(rss['peak_rss_delta_min_bytes'])}"
                    f"-{mb(rss['peak_rss_delta_max_bytes'])})"
                )
                rss_text += "" if rss["hwm_reset"] else " (*)"
            else:
                rss_text = "error" if "error" in rss else "-"
            spikes = (
                "identical"
                if row["spikes_identical"]
                else f"{100 * row['spike_agreement']:.4f}% agree"
            )
            cells = [
                name,
                f"{row['median_ms']:.2f}",
                f"{row['min_ms']:.2f}-{row['max_ms']:.2f}",
                *(f"{row[f'ratio_{sz}']:.2f}" for sz in ratio_cols),
                mb(row["saved_bytes"]),
                rss_text,
                spikes,
                f"{row['grad_max_abs_diff']:.1e}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        notes = []
        for name, row in rows.items():
            if row["saved_bytes_input_alias"]:
                notes.append(
                    f"{name} saves the input itself ({mb(row['saved_bytes_input_alias'])} MiB "
                    "of the saved bytes, no extra memory)"
                )
            rss = row.get("rss", {})
            if rss.get("recompiled_in_measured_call"):
                notes.append(f"{name}: torch.compile recompiled inside the RSS measurement")
            if "error" in rss:
                notes.append(f"{name}: RSS child failed: {rss['error'][-300:]}")
        if "spikezoo-inductor" in rows:
            row = rows["spikezoo-inductor"]
            text = (
                f"spikezoo-inductor first call {row['first_call_s']:.2f} s "
                f"(steady {row['median_ms'] / 1e3:.3f} s)"
            )
            if "warmup_first_call_s" in row.get("rss", {}):
                text += (
                    f"; first call in a fresh process with the disk cache filled: "
                    f"{row['rss']['warmup_first_call_s']:.2f} s"
                )
            notes.append(text)
        if any(not r.get("rss", {}).get("hwm_reset", True) for r in rows.values()):
            notes.append("(*) high-water mark not reset: the RSS delta is a lower bound")
        lines += [f"- {note}" for note in notes] + [""]
    if report.get("compile_s") is not None:
        lines.append(
            f"spikezoo-inductor compile time (first call minus steady median, first case, "
            f"{env['compile_cache']}): {report['compile_s']:.2f} s"
        )
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        t, n = item.lower().split("x")
        sizes.append((int(t), int(n.replace("_", ""))))
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--sizes",
        default="4x2000000,4x16384",
        help="comma-separated TxN cases (default: 4x2000000,4x16384)",
    )
    p.add_argument("--repeats", type=int, default=15, help="measured rounds (default 15)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up rounds, >= 1 (default 3)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument(
        "--impls",
        default=",".join(IMPLS),
        help=f"comma-separated subset of {','.join(IMPLS)}",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the full results as JSON")
    p.add_argument(
        "--rss-runs",
        type=int,
        default=3,
        help="fresh processes per implementation and size for the peak RSS; the median is "
        "reported (default 3; 0 skips the RSS measurement)",
    )
    p.add_argument(
        "--reuse-compile-cache",
        action="store_true",
        help="use torch.compile's default on-disk cache instead of a fresh temporary one "
        "(then the reported compile time may be a cache load)",
    )
    # internal: one fresh-process RSS measurement
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--t", type=int, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    if args.child:
        child_main(args)
        return None
    impl_names = [name.strip() for name in args.impls.split(",") if name.strip()]
    for name in impl_names:
        if name not in IMPLS:
            raise SystemExit(f"unknown implementation {name!r}; expected some of {IMPLS}")
    torch.set_num_threads(args.threads)

    tmp = None
    if args.reuse_compile_cache:
        cache = "default on-disk cache (may already hold the kernels)"
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_neurons_inductor_")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tmp.name  # read lazily, inherited by children
        cache = "fresh temporary cache (cold compile in this process, reused by the RSS runs)"
    env = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "rss_runs": args.rss_runs,
        "warmup": max(args.warmup, 1),
        "seed": args.seed,
        "compile_cache": cache,
        "versions": versions(),
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }
    try:
        cases = []
        for t, n in parse_sizes(args.sizes):
            print(f"running T={t}, N={n:,} ...", file=sys.stderr, flush=True)
            cases.append(bench_case(t, n, impl_names, args))
    finally:
        if tmp is not None:
            tmp.cleanup()
    env["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    compile_s = None
    if cases and "spikezoo-inductor" in cases[0]["rows"]:
        row = cases[0]["rows"]["spikezoo-inductor"]
        compile_s = row["first_call_s"] - row["median_ms"] / 1e3
    report = {"environment": env, "compile_s": compile_s, "cases": cases}
    print(markdown(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
