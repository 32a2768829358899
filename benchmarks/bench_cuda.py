"""Multi-step LIF on a CUDA GPU: spikezoo's CuPy kernels against its inductor (Triton) path and
spikingjelly 2.x's CUDA backends. Forward + backward time and peak memory.

Every implementation runs the same neuron over the same random float32 input ``x [T, N]``
(default N = 8M neurons, T = 4 and 16): LIF with tau=2, v_threshold=1, hard reset to 0, sigmoid
surrogate (alpha=4), detach_reset=True, membrane at rest at t=0. One measured call is a forward
pass plus ``torch.autograd.grad(spikes, x, g)`` for a fixed random ``g``.

Implementations:

- ``spikezoo-cupy``: ``MultiStepLIF(backend="cupy")``, the CUDA kernels of
  ``spikezoo/neurons/cuda/neurons.cu`` (one launch forward, one backward);
- ``spikezoo-inductor``: ``MultiStepLIF(backend="inductor")``, the loops compiled by
  ``torch.compile`` into Triton kernels (compiled in the warm-up);
- ``spikezoo-torch``: the eager loops (not run by default);
- ``spikingjelly-cuda`` / ``spikingjelly-triton``: spikingjelly 2.x
  ``neuron.LIFNode(step_mode="m")`` with ``SJ_LIF_CUDA_IMPLEMENTATION=cuda`` (its native CUDA
  kernels, present only in a spikingjelly built from source with ``SJ_BUILD_NATIVE_CUDA=1``;
  the PyPI wheel has none, and that process then reports the backend unavailable) or
  ``=triton``. That variable is read when spikingjelly is imported, so each spikingjelly
  backend runs in its own process, together with the spikezoo implementations, and every ratio
  compares numbers of the same process.

Time: CUDA events around each call; every round runs each implementation once, in a rotating
order; the tables give the median over the rounds (and min-max) and the ratio of the medians
against ``spikezoo-cupy`` (above 1: spikezoo-cupy is faster). Memory: the peak of
``torch.cuda.max_memory_allocated`` during one call, above what was allocated before it (the
input and ``g``). The spikes of every implementation are compared with the first one's.

``--smoke`` runs the same harness on the CPU with a small input, spikezoo's eager loops and
spikingjelly's CPU path, to check the script without a GPU. Run ``--help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

TAU, V_THRESHOLD, V_RESET, ALPHA = 2.0, 1.0, 0.0, 4.0
MiB = 2**20
CHILD_MARK = "BENCH_CUDA_RESULT "
SPIKEZOO_BACKENDS = {f"spikezoo-{name}": name for name in ("cupy", "inductor", "torch")}


def make_module(name: str) -> torch.nn.Module:
    """The neuron layer of implementation ``name`` (spikingjelly's backend was chosen at import)."""
    if name in SPIKEZOO_BACKENDS:
        from spikezoo.neurons import MultiStepLIF

        return MultiStepLIF(
            tau=TAU, v_threshold=V_THRESHOLD, v_reset=V_RESET, surrogate="sigmoid", alpha=ALPHA,
            detach_reset=True, backend=SPIKEZOO_BACKENDS[name],
        )  # fmt: skip
    from spikingjelly.activation_based import neuron, surrogate

    return neuron.LIFNode(
        tau=TAU, decay_input=True, v_threshold=V_THRESHOLD, v_reset=V_RESET,
        surrogate_function=surrogate.Sigmoid(alpha=ALPHA), detach_reset=True, step_mode="m",
    )  # fmt: skip


def fwd_bwd(module: torch.nn.Module, x: torch.Tensor, g: torch.Tensor):
    """One measured call: spikes and ``dL/dx`` for ``L = sum(spikes * g)``."""
    if hasattr(module, "reset"):
        module.reset()  # spikingjelly keeps the membrane between calls
    leaf = x.detach().requires_grad_()
    spikes = module(leaf)
    (grad,) = torch.autograd.grad(spikes, leaf, g)
    return spikes, grad


class Timer:
    """Seconds of ``fn()``: CUDA events on a GPU, ``perf_counter`` on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> float:
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000


def peak_bytes(module, x, g, device: torch.device) -> int | None:
    """Peak memory of one call above what was allocated before it (CUDA only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = fwd_bwd(module, x, g)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del result
    return peak


def bench_size(steps: int, args: argparse.Namespace) -> dict:
    """Every implementation of ``args.impls`` on ``x [steps, args.neurons]``."""
    device = torch.device(args.device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    x = torch.randn(steps, args.neurons, generator=gen, device=device) * 1.5 + 0.5
    g = torch.randn(steps, args.neurons, generator=gen, device=device)
    modules = {name: make_module(name).to(device) for name in args.impls}
    timer = Timer(device)
    first_call = {name: timer(lambda m=m: fwd_bwd(m, x, g)) for name, m in modules.items()}
    reference_spikes, reference_grad = fwd_bwd(modules[args.impls[0]], x, g)
    agreement = {}
    for name, module in modules.items():
        spikes, grad = fwd_bwd(module, x, g)
        agreement[name] = {
            "spikes_equal_fraction": (spikes == reference_spikes).float().mean().item(),
            "grad_max_abs_diff": (grad - reference_grad).abs().max().item(),
        }
        del spikes, grad
    del reference_spikes, reference_grad
    peaks = {name: peak_bytes(m, x, g, device) for name, m in modules.items()}
    times: dict[str, list[float]] = {name: [] for name in modules}
    order = list(modules)
    for round_index in range(args.warmup + args.repeats):
        for name in order:
            seconds = timer(lambda m=modules[name]: fwd_bwd(m, x, g))
            if round_index >= args.warmup:
                times[name].append(seconds)
        order = order[1:] + order[:1]
    return {
        name: {
            "median_s": statistics.median(times[name]),
            "min_s": min(times[name]),
            "max_s": max(times[name]),
            "times_s": times[name],
            "first_call_s": first_call[name],
            "peak_bytes": peaks[name],
            **agreement[name],
        }
        for name in modules
    }


def run_process(sj_implementation: str | None, impls: list[str], args) -> dict:
    """:func:`bench_size` for every T in a fresh Python, with spikingjelly's backend chosen."""
    env = dict(os.environ)
    if sj_implementation is not None:
        env["SJ_LIF_CUDA_IMPLEMENTATION"] = sj_implementation
    command = [
        sys.executable, __file__, "--child", "--device", args.device,
        "--neurons", str(args.neurons), "--steps", *map(str, args.steps),
        "--impls", *impls, "--repeats", str(args.repeats), "--warmup", str(args.warmup),
        "--seed", str(args.seed),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(CHILD_MARK):
            return json.loads(line[len(CHILD_MARK) :])
    return {"error": (done.stderr or done.stdout).strip().splitlines()[-20:]}


def table(case: dict, baseline: str) -> str:
    """A markdown table of one size of one process."""
    lines = [
        f"| implementation | median ms (min-max) | time / {baseline} | peak MiB | memory / "
        f"{baseline} | spikes equal | max abs grad diff |",
        "|---|---|---|---|---|---|---|",
    ]
    base = case.get(baseline)
    for name, r in case.items():
        time_ratio = f"{r['median_s'] / base['median_s']:.2f}" if base else "-"
        peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / MiB:.0f}"
        memory_ratio = (
            f"{r['peak_bytes'] / base['peak_bytes']:.2f}"
            if base and r["peak_bytes"] and base["peak_bytes"]
            else "-"
        )
        lines.append(
            f"| {name} | {r['median_s'] * 1e3:.2f} ({r['min_s'] * 1e3:.2f}-{r['max_s'] * 1e3:.2f})"
            f" | {time_ratio} | {peak} | {memory_ratio} | {r['spikes_equal_fraction']:.6f}"
            f" | {r['grad_max_abs_diff']:.2e} |"
        )
    return "\n".join(lines)


def describe_machine(device: str) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": device}
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    for package in ("cupy", "spikingjelly", "triton"):
        try:
            info[package] = __import__(package).__version__
        except Exception as error:  # absent or broken: recorded, not fatal
            info[package] = f"unavailable ({type(error).__name__})"
    return info


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--neurons", type=int, default=8 * 2**20, help="N (default 8M)")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 16], help="T values")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--impls", nargs="+", default=["spikezoo-cupy", "spikezoo-inductor"],
        help="spikezoo implementations to run with every spikingjelly backend",
    )  # fmt: skip
    parser.add_argument(
        "--sj-implementations", nargs="*", default=["cuda", "triton"],
        help="spikingjelly CUDA backends (SJ_LIF_CUDA_IMPLEMENTATION), one process each",
    )  # fmt: skip
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", help="write every number to this file")
    parser.add_argument(
        "--smoke", action="store_true",
        help="CPU dry run: small input, spikezoo-torch and spikingjelly's CPU path",
    )  # fmt: skip
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.device, args.neurons, args.repeats, args.warmup = "cpu", 4096, 3, 1
        args.impls, args.sj_implementations = ["spikezoo-torch"], [None]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(
            CHILD_MARK + json.dumps({f"T={steps}": bench_size(steps, args) for steps in args.steps})
        )
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke for a CPU dry run", file=sys.stderr)
        return 2
    report = {"machine": describe_machine(args.device), "args": vars(args), "processes": {}}
    for sj in args.sj_implementations:
        label = f"spikingjelly-{sj}" if sj else "spikingjelly-cpu"
        results = run_process(sj, [*args.impls, "spikingjelly"], args)
        report["processes"][label] = results
        print(f"\n## {label} process ({report['machine'].get('gpu', args.device)})")
        if "error" in results:
            print("failed:\n" + "\n".join(results["error"]))
            continue
        for size, case in results.items():
            print(f"\n### {size}, N={args.neurons}\n")
            print(
                table(
                    {name.replace("spikingjelly", label): r for name, r in case.items()},
                    args.impls[0],
                )
            )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1)
    return 0 if any("error" not in r for r in report["processes"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
