"""Multi-step LIF on the CPU: spikezoo against spikingjelly and snnTorch, time and memory.

Every implementation runs the same neuron over the same random float32 input ``x [T, N]``:
LIF with tau=2, v_threshold=1, hard reset to 0, sigmoid surrogate (alpha=4), detach_reset=True,
membrane at rest (0) at t=0. One measured call is a forward pass plus the backward pass
``torch.autograd.grad(spikes, x, g)`` for a fixed random ``g``.

Implementations (``--impls``):

- ``spikezoo-torch``: ``spikezoo.neurons.MultiStepLIF(backend="torch")`` (eager loops in one
  custom autograd function that saves the charged membrane, one ``[N]`` tensor per step);
- ``spikezoo-native``: the same with ``backend="native"`` (``"auto"`` picks it on a CPU): the
  loops in C (``spikezoo/native/neurons.c``), nothing compiled per shape; it saves the input
  ``x`` instead of the membranes and recharges them in its backward pass;
- ``spikezoo-inductor``: the same with ``backend="inductor"`` (``"auto"``'s choice on a CPU
  where the C loops cannot run); the loops are compiled by ``torch.compile`` on the first call,
  which the warm-up absorbs and which is reported on its own; it saves the input ``x`` too and
  recharges the membranes inside the backward kernel;
- ``spikingjelly``: ``neuron.LIFNode(step_mode="m", detach_reset=True,
  surrogate_function=surrogate.Sigmoid())``, its default CPU path, ``reset()`` before each call;
- ``snntorch``: ``snn.Leaky(beta=0.5, reset_mechanism="zero", spike_grad=sigmoid(slope=4))``
  stepped in a Python loop over T (the snnTorch idiom). snnTorch does not scale the input by
  ``1/tau`` (``U = beta * V + I``), so it is fed ``x / tau`` (prepared outside the timing,
  like a weight absorbing the constant); its gradient w.r.t. ``x`` is then ``grad / tau``.
  What still differs: snnTorch fires on ``U > 1`` (spikingjelly/spikezoo: ``H >= 1``), and
  ``0.5 * V + 0.5 * x`` rounds differently from ``V + (x - V) * 0.5`` in float32, so a few
  membranes within an ulp of the threshold may flip; the script reports the agreement.

Time (``harness.timing``): one ``torch.utils.benchmark.Timer`` per implementation; the first
call (for ``spikezoo-inductor``: the compile) is reported on its own, ``blocked_autorange`` warms
up and sizes a block of calls, then every measured round runs one block of each implementation
in a rotating order, so background load hits all of them alike. The table gives the median (and
min/max) of the rounds and the ratio ``spikezoo / peer`` of the medians (below 1: spikezoo is
faster); the JSON also has the median of the per-round (paired) ratios.

Roofline: a plain tensor add ``x + g`` (reads two ``[T, N]`` float32 tensors, writes a fresh
one) runs in the same interleaved rounds; its median gives the memory bandwidth this machine
reaches in this run. The least traffic of a LIF forward+backward that keeps its membranes is
six such tensors (forward: read ``x``, write the spikes and the charged membranes; backward:
read the gradient and the membranes, write ``dx``); each spikezoo row reports that traffic over
its median time as a fraction of the add's bandwidth (1.00: at the add's roofline). The
``"inductor"`` backend recharges the membranes from ``x`` in its backward kernel and moves five
tensors (two of them freshly allocated, as against the add's one), as does ``"native"``, so
their rows can pass 1.00.

Memory: (a) bytes of the tensors autograd keeps for backward, seen by
``torch.autograd.graph.saved_tensors_hooks`` (unique storages, so views and repeats count once);
(b) the peak resident memory of one forward+backward in a fresh process per implementation
(``harness.process``; median of ``--rss-runs`` processes): the rise of the resident high-water
mark over the call, with the input already created and the mark reset just before, after a
smaller warm-up call (which loads compiled code) so that imports and lazy initialisation do not
count.

Run ``python benchmarks/bench_neurons.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import weakref
from functools import partial
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from harness.environment import (  # noqa: E402
    command_line,
    environment,
    finish,
    freed_memory_policy,
    load_text,
    threads_text,
)
from harness.markdown import table, write_generated  # noqa: E402
from harness.process import ChildFailed, PeakMemory, run_in_fresh_process  # noqa: E402
from harness.timing import Timing, compare, interleaved, paired_ratio, time_once  # noqa: E402

TAU = 2.0
V_THRESHOLD = 1.0
V_RESET = 0.0
ALPHA = 4.0
IMPLS = ("spikezoo-torch", "spikezoo-native", "spikezoo-inductor", "spikingjelly", "snntorch")
SPIKEZOO = ("spikezoo-torch", "spikezoo-native", "spikezoo-inductor")
PACKAGES = ("spikezoo-vit", "spikingjelly", "snntorch")
MiB = 2**20
WARMUP_N = 65536  # neurons in the RSS child's warm-up call (above ATen's parallel grain size)
TENSOR_ADD = "tensor-add"
#: [T, N] float32 tensors a LIF forward+backward must read or write at least (see the docstring).
LIF_TENSORS_MOVED = 6
#: ... and a tensor add (two read, one written).
ADD_TENSORS_MOVED = 3


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


def fwd_bwd(impl: Impl, leaf: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward+backward from a reset state: the spikes and the gradient w.r.t. the leaf."""
    impl.reset()
    spikes = impl.forward(leaf)
    (grad,) = torch.autograd.grad(spikes, leaf, g)
    return spikes, grad


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


def dynamo_frames() -> int:
    """How many graphs dynamo has compiled in this process."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def rss_call(memory: PeakMemory, impl: str, t: int, n: int, threads: int, seed: int) -> dict:
    """In a fresh process (``harness.process``): the peak RSS rise of one forward+backward."""
    torch.set_num_threads(threads)
    neuron = make_impl(impl)
    # A smaller warm-up call: lazy initialisation (thread pool, for inductor the compiled kernels
    # loaded from the on-disk cache the parent filled) happens here, not in the measured call.
    xs, gs = make_inputs(t, min(n, WARMUP_N), seed + 1)
    leaf = neuron.prepare(xs)
    warmup_s = time_once(partial(fwd_bwd, neuron, leaf, gs))
    x, g = make_inputs(t, n, seed)
    leaf = neuron.prepare(x)
    del x, xs, gs
    gc.collect()
    frames = dynamo_frames()
    memory.reset()
    fwd_bwd(neuron, leaf, g)  # what it returns counts too: the peak is read after the return
    return dict(warmup_first_call_s=warmup_s, recompiled_in_measured_call=dynamo_frames() != frames)


def measure_rss(name: str, t: int, n: int, args: argparse.Namespace) -> dict:
    """Median (and range) of the peak RSS rise over ``args.rss_runs`` fresh processes."""
    runs, errors = [], []
    for _ in range(args.rss_runs):
        kwargs = dict(impl=name, t=t, n=n, threads=args.threads, seed=args.seed)
        try:
            runs.append(run_in_fresh_process("bench_neurons:rss_call", kwargs, timeout=600))
        except ChildFailed as error:
            errors.append(str(error)[-1000:])
    if not runs:
        return {"error": errors[-1]}
    rises = [run.peak_bytes for run in runs]
    return {
        "peak_rss_delta_bytes": statistics.median(rises),
        "peak_rss_delta_min_bytes": min(rises),
        "peak_rss_delta_max_bytes": max(rises),
        "peak_rss_counter": runs[0].counter,
        "warmup_first_call_s": statistics.median(r.value["warmup_first_call_s"] for r in runs),
        "recompiled_in_measured_call": any(r.value["recompiled_in_measured_call"] for r in runs),
        "runs": [run.to_dict() for run in runs],
        "errors": errors,
    }


def check_agreement(impls: list[Impl], x: torch.Tensor, g: torch.Tensor) -> dict:
    """Spikes and input gradients of every implementation against spikingjelly's (or the first)."""
    outputs = {}
    for impl in impls:
        spikes, grad = fwd_bwd(impl, impl.prepare(x), g)
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
        }
    return result


def _row(name: str, timings: dict[str, Timing]) -> dict:
    """One implementation's timing with its ratios against the spikezoo backends."""
    row = timings[name].to_dict()
    for sz in SPIKEZOO:
        if sz in timings and timings[sz].measurement and timings[name].measurement:
            row[f"ratio_{sz}"] = timings[sz].median_s / timings[name].median_s
            row[f"paired_ratio_{sz}"] = paired_ratio(timings[name], timings[sz])
    return row


def bench_case(t: int, n: int, impl_names: list[str], args: argparse.Namespace) -> dict:
    """Time, saved bytes, peak RSS and agreement of every implementation on ``x [t, n]``."""
    impls = [make_impl(name) for name in impl_names]
    x, g = make_inputs(t, n, args.seed)
    calls = {impl.name: partial(fwd_bwd, impl, impl.prepare(x), g) for impl in impls}
    calls[TENSOR_ADD] = partial(torch.add, x, g)
    frames_before = dynamo_frames()
    timings = interleaved(
        calls, repeats=args.repeats, threads=args.threads, warmup_rounds=args.warmup,
        min_block_s=args.min_block, label="MultiStepLIF fwd+bwd", sub_label=f"T={t}, N={n}",
    )  # fmt: skip
    compiled_frames = dynamo_frames() - frames_before
    del calls
    gc.collect()
    agreement = check_agreement(impls, x, g)
    saved = {impl.name: saved_for_backward(impl, impl.prepare(x)) for impl in impls}
    del x, g
    gc.collect()
    tensor_bytes = t * n * 4
    add = timings[TENSOR_ADD]
    add_bandwidth = ADD_TENSORS_MOVED * tensor_bytes / add.median_s if add.measurement else None
    rows = {}
    for name in impl_names:
        rows[name] = _row(name, timings) | saved[name] | agreement["impls"][name]
        if name in SPIKEZOO and add_bandwidth and "median_s" in rows[name]:
            bandwidth = LIF_TENSORS_MOVED * tensor_bytes / rows[name]["median_s"]
            rows[name]["bandwidth_bytes_per_s"] = bandwidth
            rows[name]["fraction_of_add_bandwidth"] = bandwidth / add_bandwidth
        if args.rss_runs > 0:
            rows[name]["rss"] = measure_rss(name, t, n, args)
    return {
        "T": t, "N": n, "input_bytes": tensor_bytes, "reference": agreement["reference"],
        "firing_rate": agreement["firing_rate"], "rows": rows, "timings": timings,
        "tensor_add": add.to_dict() | {"bandwidth_bytes_per_s": add_bandwidth},
        "dynamo_frames_compiled": compiled_frames,
    }  # fmt: skip


# ----------------------------------------------------------------------------- reporting


def mb(nbytes: float) -> str:
    return f"{nbytes / MiB:.1f}"


def _rss_text(rss: dict) -> str:
    if "peak_rss_delta_bytes" not in rss:
        return "error" if "error" in rss else "-"
    low, high = mb(rss["peak_rss_delta_min_bytes"]), mb(rss["peak_rss_delta_max_bytes"])
    return f"{mb(rss['peak_rss_delta_bytes'])} ({low}-{high})"


def _case_table(case: dict) -> str:
    rows = case["rows"]
    ratio_cols = [sz for sz in SPIKEZOO if sz in rows]
    header = ["implementation", "median ms", "min-max ms"]
    header += [f"{sz} / this" for sz in ratio_cols]
    header += ["of add bandwidth", "saved for bwd MiB", "peak RSS delta MiB"]
    header += ["spikes vs ref", "max abs dx diff"]
    cells = []
    for name, row in rows.items():
        spikes = (
            "identical" if row["spikes_identical"] else f"{100 * row['spike_agreement']:.4f}% agree"
        )
        timed = "median_s" in row
        cells.append(
            [
                name,
                f"{row['median_s'] * 1e3:.2f}" if timed else "failed",
                f"{row['min_s'] * 1e3:.2f}-{row['max_s'] * 1e3:.2f}" if timed else "-",
                *(
                    f"{row[f'ratio_{sz}']:.2f}" if f"ratio_{sz}" in row else "-"
                    for sz in ratio_cols
                ),
                f"{row['fraction_of_add_bandwidth']:.2f}"
                if "fraction_of_add_bandwidth" in row
                else "-",
                mb(row["saved_bytes"]),
                _rss_text(row.get("rss", {})),
                spikes,
                f"{row['grad_max_abs_diff']:.1e}",
            ]
        )
    return table(header, cells)


def _case_notes(case: dict) -> list[str]:
    notes = []
    for name, row in case["rows"].items():
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
        if "error" in row:
            notes.append(f"{name}: failed: {row['error']}")
    add = case["tensor_add"]
    if add.get("bandwidth_bytes_per_s"):
        notes.append(
            f"tensor add `x + g` in the same rounds: {add['median_s'] * 1e3:.2f} ms, "
            f"{add['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s; a LIF forward+backward moves at "
            f"least {LIF_TENSORS_MOVED * case['input_bytes'] / 1e6:.0f} MB"
        )
    row = case["rows"].get("spikezoo-native", {})
    if "first_call_s" in row:
        notes.append(
            f"spikezoo-native first call {row['first_call_s'] * 1e3:.1f} ms (loads the C library, "
            f"built once per machine, and checks the configuration on a probe; steady "
            f"{row['median_s'] * 1e3:.2f} ms)"
        )
    row = case["rows"].get("spikezoo-inductor", {})
    if "first_call_s" in row and not case["dynamo_frames_compiled"]:
        text = (
            "spikezoo-inductor compiled nothing for this size: the kernels compiled for an "
            f"earlier size in this process serve it (steady {row['median_s'] * 1e3:.2f} ms)"
        )
        if "warmup_first_call_s" in row.get("rss", {}):
            text += (
                f"; first call in a fresh process with the disk cache filled: "
                f"{row['rss']['warmup_first_call_s']:.2f} s"
            )
        notes.append(text)
    elif "first_call_s" in row:
        text = (
            f"spikezoo-inductor first call {row['first_call_s']:.2f} s, compiling "
            f"{case['dynamo_frames_compiled']} graph(s) (steady {row['median_s'] * 1e3:.2f} ms)"
        )
        if "warmup_first_call_s" in row.get("rss", {}):
            text += (
                f"; first call in a fresh process with the disk cache filled: "
                f"{row['rss']['warmup_first_call_s']:.2f} s"
            )
        notes.append(text)
    return notes


def markdown(report: dict) -> str:
    """The report: the run's context, then one table per size."""
    env = report["environment"]
    lines = [
        f"- run: {env['date']}; {env['device']}, {threads_text(env['threads'])}; {load_text(env)}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
        f"- command: `{env['command']}`",
        f"- neuron: LIF tau={TAU}, v_threshold={V_THRESHOLD}, hard reset to {V_RESET}, "
        f"sigmoid surrogate alpha={ALPHA}, detach_reset=True; x ~ N(1, 2^2) float32",
        f"- time: forward + backward (`torch.utils.benchmark.Timer`), median of "
        f"{report['settings']['repeats']} interleaved rounds after `blocked_autorange`'s "
        "warm-up; ratio = spikezoo median / this median (below 1: spikezoo is faster)",
        f"- of add bandwidth: the least traffic of LIF forward+backward ({LIF_TENSORS_MOVED} "
        "[T, N] float32 tensors) over the median time, as a fraction of the bandwidth a tensor "
        "add `x + g` reached in the same rounds (1.00: at the add's memory roofline)",
        "- saved for bwd: unique storages packed by torch.autograd.graph.saved_tensors_hooks "
        "during the forward pass",
        f"- peak RSS delta: rise of the resident high-water mark over one forward+backward in a "
        f"fresh process (input already created, mark reset first), median (min-max) of "
        f"{report['settings']['rss_runs']} processes; it includes the returned spikes and input "
        "gradient",
        f"- torch.compile cache: {report['settings']['compile_cache']}",
        f"- freed memory: {report['settings']['freed_memory']}",
        "",
    ]
    for case in report["cases"]:
        lines += [
            f"**T = {case['T']}, N = {case['N']:,}** (input {mb(case['input_bytes'])} MiB; "
            f"firing rate {case['firing_rate']:.3f}; spikes compared with {case['reference']})",
            "",
            _case_table(case),
            "",
        ]
        lines += [f"- {note}" for note in _case_notes(case)] + [""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"4x2000000,4x16384"`` -> ``[(4, 2000000), (4, 16384)]``."""
    sizes = []
    for item in text.split(","):
        try:
            t, n = item.lower().split("x")
            sizes.append((int(t), int(n.replace("_", ""))))
        except ValueError as error:
            raise SystemExit(f"--sizes: expected TxN items like 4x16384, got {item!r}") from error
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--sizes", default="4x2000000,16x500000,4x16384",
        help="comma-separated TxN cases (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--repeats", type=int, default=15, help="measured rounds (default 15)")
    p.add_argument(
        "--warmup", type=int, default=1,
        help="unmeasured rounds after blocked_autorange's warm-up (default 1)",
    )  # fmt: skip
    p.add_argument(
        "--min-block", type=float, default=0.05,
        help="seconds of the shortest timed block of calls (default 0.05)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument(
        "--impls", default=",".join(IMPLS), help=f"comma-separated subset of {','.join(IMPLS)}"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the full results as JSON")
    p.add_argument(
        "--markdown", type=Path,
        help="write the tables into this file (between its bench_neurons markers, if any)",
    )  # fmt: skip
    p.add_argument(
        "--rss-runs", type=int, default=3,
        help="fresh processes per implementation and size for the peak RSS; the median is "
        "reported (default 3; 0 skips the RSS measurement)",
    )  # fmt: skip
    p.add_argument(
        "--keep-freed-memory", action="store_true",
        help="tell glibc to keep freed memory mapped (mallopt) in the timing process, so that "
        "no implementation's fresh output buffers are faulted in anew on each call",
    )  # fmt: skip
    p.add_argument(
        "--reuse-compile-cache", action="store_true",
        help="use torch.compile's default on-disk cache instead of a fresh temporary one "
        "(then the reported compile time may be a cache load)",
    )  # fmt: skip
    args = p.parse_args(argv)
    args.command = command_line("bench_neurons.py", argv)
    args.impls = [name.strip() for name in args.impls.split(",") if name.strip()]
    unknown = [name for name in args.impls if name not in IMPLS]
    if unknown:
        p.error(f"--impls: unknown {', '.join(unknown)}; expected some of {', '.join(IMPLS)}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    env = environment("cpu", args.threads, args.command, PACKAGES)
    settings = dict(
        sizes=args.sizes, repeats=args.repeats, warmup=args.warmup, rss_runs=args.rss_runs,
        seed=args.seed, impls=args.impls, freed_memory=freed_memory_policy(args.keep_freed_memory),
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench_neurons_inductor_") as cache:
        if args.reuse_compile_cache:
            settings["compile_cache"] = "default on-disk cache (may already hold the kernels)"
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # read lazily, inherited by children
            settings["compile_cache"] = (
                "fresh temporary cache (cold compile in this process, reused by the RSS runs)"
            )
        cases = []
        for t, n in parse_sizes(args.sizes):
            print(f"running T={t}, N={n:,} ...", file=sys.stderr, flush=True)
            cases.append(bench_case(t, n, args.impls, args))
    finish(env)
    print(compare([case.pop("timings") for case in cases]), file=sys.stderr)
    report = {"environment": env, "settings": settings, "cases": cases}
    text = markdown(report)
    print(text)
    if args.markdown:
        write_generated(args.markdown, "bench_neurons", text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
