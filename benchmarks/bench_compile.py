"""Cold compile cost of the default neuron backend against the sequence length T.

For each T, a fresh Python process with an empty inductor cache (``TORCHINDUCTOR_CACHE_DIR``)
builds ``MultiStepLIF()`` (``backend="auto"``) and times its first forward+backward over
``x [T, N]``: the cold compile plus one run. It then times the steady state of the same call
and of the eager loops (``backend="torch"``) for comparison, and records which backend
``"auto"`` ran and how many graphs dynamo compiled.

    python benchmarks/bench_compile.py --json compile.json

prints a markdown table and, with ``--json``, writes every measurement. Options:
``--steps 4,64,256,1024``, ``--neurons 4096``, ``--threads 2``, ``--timeout 900`` (seconds per
process; a process that runs out is reported as such), ``--repeats 1`` (fresh processes per
T; the table gives the median).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def child_main(steps: int, neurons: int, threads: int) -> None:
    """Run in the fresh process: print one JSON line with the timings."""
    start = time.perf_counter()
    import torch
    from torch._dynamo.utils import counters

    from spikezoo.neurons import MultiStepLIF, backends

    import_s = time.perf_counter() - start
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(steps, neurons, generator=gen) * 2 + 1
    grad = torch.randn(steps, neurons, generator=gen)

    def call(neuron: torch.nn.Module) -> float:
        leaf = x.clone().requires_grad_()
        begin = time.perf_counter()
        torch.autograd.grad(neuron(leaf), leaf, grad)
        return time.perf_counter() - begin

    auto, eager = MultiStepLIF(), MultiStepLIF(backend="torch")
    first_s = call(auto)
    steady_s = statistics.median(call(auto) for _ in range(3))
    eager_s = statistics.median(call(eager) for _ in range(3))
    failed = sorted({key[0] for key in backends._AUTO_FAILURES})
    print(
        json.dumps(
            {
                "import_s": import_s,
                "first_call_s": first_s,
                "steady_s": steady_s,
                "eager_s": eager_s,
                "graphs": counters["stats"]["unique_graphs"],
                "auto_ran": "torch" if "inductor" in failed else "inductor",
            }
        )
    )


def run_child(steps: int, args: argparse.Namespace) -> dict:
    """One fresh process with a fresh, empty inductor cache."""
    with tempfile.TemporaryDirectory(prefix="spikezoo-compile-") as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, PYTHONPATH=str(REPO))
        command = [sys.executable, __file__, "--child", str(steps)]
        command += ["--neurons", str(args.neurons), "--threads", str(args.threads)]
        try:
            done = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=args.timeout, check=True
            )
        except subprocess.TimeoutExpired:
            return {"timeout_s": args.timeout}
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(report: dict) -> str:
    """The results as a markdown table."""
    lines = [
        f"- machine: {report['machine']}, {report['threads']} threads, "
        f"1-min load average before the run {report['load_before']:.2f}",
        f"- torch {report['torch']}, N = {report['neurons']} neurons, float32, "
        f"forward + backward, median of {report['repeats']} fresh process(es) per T",
        "",
        "| T | first call s (cold compile) | steady ms | eager ms | graphs | auto ran |",
        "|---|---|---|---|---|---|",
    ]
    for steps, runs in report["results"].items():
        done = [run for run in runs if "first_call_s" in run]
        if not done:
            lines.append(f"| {steps} | > {runs[0]['timeout_s']} (timed out) | - | - | - | - |")
            continue

        def median(key: str, runs: list[dict] = done) -> float:
            return statistics.median(run[key] for run in runs)

        lines.append(
            f"| {steps} | {median('first_call_s'):.1f} | {median('steady_s') * 1e3:.2f} | "
            f"{median('eager_s') * 1e3:.2f} | {done[0]['graphs']} | {done[0]['auto_ran']} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", default="4,64,256,1024", help="sequence lengths T")
    parser.add_argument("--neurons", type=int, default=4096, help="N (default 4096)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per T")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per process")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict | None:
    """Run every T in fresh processes; print the table, optionally write JSON."""
    args = parse_args(argv)
    if args.child is not None:
        child_main(args.child, args.neurons, args.threads)
        return None
    import torch

    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_before": os.getloadavg()[0],
        "torch": torch.__version__,
        "threads": args.threads,
        "neurons": args.neurons,
        "repeats": args.repeats,
        "results": {},
    }
    for steps in (int(s) for s in args.steps.split(",")):
        report["results"][steps] = [run_child(steps, args) for _ in range(args.repeats)]
        print(f"T={steps}: {report['results'][steps]}", file=sys.stderr, flush=True)
    print(markdown(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
