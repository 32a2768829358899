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

Time (``harness.timing``): ``torch.utils.benchmark``'s synchronising clock, the first call on
its own, ``blocked_autorange`` as warm-up, then interleaved rounds in a rotating order; the
tables give the median over the rounds (and min-max) and the ratio of the medians against
``spikezoo-cupy`` (above 1: spikezoo-cupy is faster). Memory (``harness.memory``): the peak of
``torch.cuda.max_memory_allocated`` during one call, above what was allocated before it (the
input and ``g``). The spikes of every implementation are compared with the first one's. Each
process is a ``harness.process`` child.

``--smoke`` runs the same harness on the CPU with a small input, spikezoo's eager loops and
spikingjelly's CPU path, to check the script without a GPU. Run ``--help`` for the options.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from harness.environment import command_line, environment, finish, load_text  # noqa: E402
from harness.markdown import save, table  # noqa: E402
from harness.memory import peak_allocated  # noqa: E402
from harness.process import ChildFailed, PeakMemory, run_in_fresh_process  # noqa: E402
from harness.timing import compare, interleaved  # noqa: E402

TAU, V_THRESHOLD, V_RESET, ALPHA = 2.0, 1.0, 0.0, 4.0
MiB = 2**20
SPIKEZOO_BACKENDS = {f"spikezoo-{name}": name for name in ("cupy", "inductor", "torch")}
PACKAGES = ("spikezoo-vit", "spikingjelly", "cupy-cuda12x", "cupy-cuda13x", "triton")


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


def bench_size(steps: int, settings: dict) -> dict:
    """Every implementation of ``settings["impls"]`` on ``x [steps, neurons]``."""
    device = torch.device(settings["device"])
    gen = torch.Generator(device=device).manual_seed(settings["seed"])
    x = torch.randn(steps, settings["neurons"], generator=gen, device=device) * 1.5 + 0.5
    g = torch.randn(steps, settings["neurons"], generator=gen, device=device)
    modules = {name: make_module(name).to(device) for name in settings["impls"]}
    calls = {name: partial(fwd_bwd, module, x, g) for name, module in modules.items()}
    timings = interleaved(
        calls, repeats=settings["repeats"], threads=torch.get_num_threads(),
        warmup_rounds=settings["warmup"], label="LIF fwd+bwd", sub_label=f"T={steps}",
    )  # fmt: skip
    print(compare([timings]), file=sys.stderr)
    reference_spikes, reference_grad = fwd_bwd(modules[settings["impls"][0]], x, g)
    results = {}
    for name, module in modules.items():
        if timings[name].error:
            results[name] = timings[name].to_dict()
            continue
        spikes, grad = fwd_bwd(module, x, g)
        results[name] = timings[name].to_dict() | {
            "spikes_equal_fraction": (spikes == reference_spikes).float().mean().item(),
            "grad_max_abs_diff": (grad - reference_grad).abs().max().item(),
            "peak_bytes": peak_allocated(calls[name], device) if device.type == "cuda" else None,
        }
        del spikes, grad
    return results


def child(memory: PeakMemory, **settings) -> dict:
    """In a fresh process (spikingjelly's backend fixed by its environment): every T."""
    return {f"T={steps}": bench_size(steps, settings) for steps in settings["steps"]}


def run_process(sj_implementation: str | None, impls: list[str], args) -> dict:
    """:func:`child` in a fresh process, with spikingjelly's CUDA backend chosen."""
    env = {} if sj_implementation is None else {"SJ_LIF_CUDA_IMPLEMENTATION": sj_implementation}
    settings = dict(
        device=args.device, neurons=args.neurons, steps=args.steps, impls=impls,
        repeats=args.repeats, warmup=args.warmup, seed=args.seed,
    )  # fmt: skip
    try:
        return run_in_fresh_process("bench_cuda:child", settings, env=env).value
    except ChildFailed as error:
        return {"error": str(error).strip().splitlines()[-20:]}


def size_table(case: dict, baseline: str) -> str:
    """A markdown table of one size of one process."""
    header = [
        "implementation", "median ms (min-max)", f"time / {baseline}", "peak MiB",
        f"memory / {baseline}", "spikes equal", "max abs grad diff",
    ]  # fmt: skip
    base = case.get(baseline, {})
    rows = []
    for name, r in case.items():
        if "error" in r:
            rows.append([name, f"failed: {r['error']}", "-", "-", "-", "-", "-"])
            continue
        time_ratio = f"{r['median_s'] / base['median_s']:.2f}" if "median_s" in base else "-"
        peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / MiB:.0f}"
        memory_ratio = (
            f"{r['peak_bytes'] / base['peak_bytes']:.2f}"
            if r["peak_bytes"] and base.get("peak_bytes")
            else "-"
        )
        rows.append(
            [
                name,
                f"{r['median_s'] * 1e3:.2f} ({r['min_s'] * 1e3:.2f}-{r['max_s'] * 1e3:.2f})",
                time_ratio, peak, memory_ratio, f"{r['spikes_equal_fraction']:.6f}",
                f"{r['grad_max_abs_diff']:.2e}",
            ]
        )  # fmt: skip
    return table(header, rows)


def markdown(report: dict) -> str:
    """Per spikingjelly process and size, one table."""
    env, args = report["environment"], report["args"]
    lines = [
        f"Run: {env['date']}, {env['device']}; {load_text(env)}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v) + ".",
        "",
        f"Command: `{env['command']}`",
    ]
    for label, results in report["processes"].items():
        lines += ["", f"#### {label} process", ""]
        if "error" in results:
            lines.append("failed:\n\n```\n" + "\n".join(results["error"]) + "\n```")
            continue
        for size, case in results.items():
            named = {name.replace("spikingjelly", label): r for name, r in case.items()}
            lines += [f"{size}, N={args['neurons']}:", "", size_table(named, args["impls"][0]), ""]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--neurons", type=int, default=8 * 2**20, help="N (default 8M)")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 16], help="T values")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--warmup", type=int, default=1,
        help="unmeasured rounds after blocked_autorange's warm-up (default 1)",
    )  # fmt: skip
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
    parser.add_argument("--json", type=Path, help="write every number to this file")
    parser.add_argument(
        "--markdown", type=Path, help="write the tables here (between its bench_cuda markers)"
    )
    parser.add_argument(
        "--smoke", action="store_true",
        help="CPU dry run: small input, spikezoo-torch and spikingjelly's CPU path",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.command = command_line("bench_cuda.py", argv)
    if args.smoke:
        args.device, args.neurons, args.repeats, args.warmup = "cpu", 4096, 3, 0
        args.impls, args.sj_implementations = ["spikezoo-torch"], [None]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke for a CPU dry run", file=sys.stderr)
        return 2
    env = environment(args.device, torch.get_num_threads(), args.command, PACKAGES)
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "markdown")}
    report = {"environment": env, "args": settings, "processes": {}}
    for sj in args.sj_implementations:
        label = f"spikingjelly-{sj}" if sj else "spikingjelly-cpu"
        report["processes"][label] = run_process(sj, [*args.impls, "spikingjelly"], args)
    finish(env)
    text = markdown(report)
    print(text)
    save("bench_cuda", report, text, args.json, args.markdown)
    return 0 if any("error" not in r for r in report["processes"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
