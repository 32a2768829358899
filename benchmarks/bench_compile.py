"""Cold first-call cost of a neuron backend against the sequence length T.

For each T, a fresh Python process (``harness.process``) with an empty inductor cache
(``TORCHINDUCTOR_CACHE_DIR``) and an empty spikezoo cache (``SPIKEZOO_CACHE``, where the C
loops of ``"native"`` are built) builds ``MultiStepLIF(backend=...)`` (``--backend``, default
``"auto"``, as users get it) and times its first forward+backward over ``x [T, N]``: the cold
compile or build plus one run. It then times the steady state of the same call and of the
eager loops (``backend="torch"``) with ``torch.utils.benchmark.Timer.blocked_autorange``
(median), and records which backend ran and how many graphs dynamo compiled.

    python benchmarks/bench_compile.py --json compile.json --markdown docs/benchmarks.md

prints a markdown table and, with ``--json``, writes every measurement. Options:
``--backend auto``, ``--steps 4,64,256,1024``, ``--neurons 4096``, ``--threads 2``,
``--timeout 900`` (seconds per
process; a process that runs out is reported as such), ``--repeats 1`` (fresh processes per
T; the table gives the median).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from harness.environment import (  # noqa: E402
    command_line,
    environment,
    finish,
    load_text,
    threads_text,
)
from harness.markdown import table, write_generated  # noqa: E402
from harness.process import ChildFailed, PeakMemory, run_in_fresh_process  # noqa: E402
from harness.timing import time_once  # noqa: E402

HEADER = ["T", "first call s (cold)", "steady ms", "eager ms", "graphs", "ran"]


def first_call(memory: PeakMemory, steps: int, neurons: int, threads: int, backend: str) -> dict:
    """In a fresh process: the first, steady and eager forward+backward of ``MultiStepLIF``."""
    import torch
    from torch._dynamo.utils import counters
    from torch.utils.benchmark import Timer

    from spikezoo.neurons import MultiStepLIF, backends

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(steps, neurons, generator=gen) * 2 + 1
    grad = torch.randn(steps, neurons, generator=gen)

    def call(neuron: torch.nn.Module) -> None:
        leaf = x.clone().requires_grad_()
        torch.autograd.grad(neuron(leaf), leaf, grad)

    neuron, eager = MultiStepLIF(backend=backend), MultiStepLIF(backend="torch")
    first_s = time_once(lambda: call(neuron))

    def steady_s(neuron: torch.nn.Module) -> float:
        timer = Timer("call(neuron)", globals=dict(call=call, neuron=neuron), num_threads=threads)
        return timer.blocked_autorange(min_run_time=0.5).median

    failed = {key[0] for key in backends._AUTO_FAILURES}
    ran = next(name for name in backends.resolve_backend(backend, x) if name not in failed)
    return {
        "first_call_s": first_s,
        "steady_s": steady_s(neuron),
        "eager_s": steady_s(eager),
        "graphs": counters["stats"]["unique_graphs"],
        "ran": ran,
    }


def run_child(steps: int, args: argparse.Namespace) -> dict:
    """One fresh process with fresh, empty inductor and spikezoo caches."""
    with tempfile.TemporaryDirectory(prefix="spikezoo-compile-") as cache:
        kwargs = dict(steps=steps, neurons=args.neurons, threads=args.threads, backend=args.backend)
        env = {"TORCHINDUCTOR_CACHE_DIR": cache, "SPIKEZOO_CACHE": cache}
        try:
            result = run_in_fresh_process(
                "bench_compile:first_call", kwargs, env=env, timeout=args.timeout
            )
        except ChildFailed as error:
            return {"error": str(error)[-500:]}
    return result.value | {"peak_rss_bytes": result.peak_bytes}


def markdown(report: dict) -> str:
    """The results as a markdown table."""
    env = report["environment"]
    lines = [
        f"- run: {env['date']}, {env['device']}, {threads_text(env['threads'])}; {load_text(env)}",
        f"- command: `{env['command']}`",
        f"- backend `{report['backend']}`; torch {env['versions']['torch']}, "
        f"N = {report['neurons']} neurons, float32, "
        f"forward + backward, median of {report['repeats']} fresh process(es) per T",
        "",
    ]
    rows = []
    for steps, runs in report["results"].items():
        done = [run for run in runs if "first_call_s" in run]
        if not done:
            rows.append([steps, f"failed: {runs[0]['error'][:80]}", "-", "-", "-", "-"])
            continue

        def median(key: str, runs: list[dict] = done) -> float:
            return statistics.median(run[key] for run in runs)

        rows.append(
            [
                steps, f"{median('first_call_s'):.1f}", f"{median('steady_s') * 1e3:.2f}",
                f"{median('eager_s') * 1e3:.2f}", done[0]["graphs"], done[0]["ran"],
            ]
        )  # fmt: skip
    return "\n".join([*lines, table(HEADER, rows)])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default="auto", help="the neuron backend (default auto)")
    parser.add_argument("--steps", default="4,64,256,1024", help="sequence lengths T")
    parser.add_argument("--neurons", type=int, default=4096, help="N (default 4096)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per T")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per process")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument(
        "--markdown", type=Path, help="write the table here (between its bench_compile markers)"
    )
    args = parser.parse_args(argv)
    args.command = command_line("bench_compile.py", argv)
    try:
        args.steps = [int(s) for s in args.steps.split(",")]
    except ValueError:
        parser.error(f"--steps: expected integers like 4,64, got {args.steps!r}")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run every T in fresh processes; print the table, optionally write JSON and markdown."""
    args = parse_args(argv)
    env = environment("cpu", args.threads, args.command, ("spikezoo-vit",))
    report = dict(
        environment=env, backend=args.backend, neurons=args.neurons, repeats=args.repeats,
        results={},
    )  # fmt: skip
    for steps in args.steps:
        report["results"][steps] = [run_child(steps, args) for _ in range(args.repeats)]
        print(f"T={steps}: {report['results'][steps]}", file=sys.stderr, flush=True)
    finish(env)
    text = markdown(report)
    print(text)
    if args.markdown:
        write_generated(args.markdown, "bench_compile", text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
