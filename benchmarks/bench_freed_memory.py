"""Inference and training steps with glibc's defaults against freed memory kept in the process.

``spikezoo.runtime.keep_freed_memory`` makes glibc keep freed blocks in the process, so that
a call's fresh activations reuse the pages of the call before instead of being mapped and
faulted in again. For each model and task, every round runs two fresh processes
(``harness.process``) in alternating order: one left as glibc sets it up, one that calls
``keep_freed_memory()`` before building the model. Each builds the model (seed 0, random
weights and images), runs ``--warmup`` calls, then times ``--calls`` calls (an inference batch
under ``torch.no_grad`` in eval mode, or a training step: forward, cross-entropy, backward, SGD
with momentum) and reports their median and its resident high-water mark above the point
before the timed calls (Linux ``VmHWM``). The table gives, per model and task, the median of
the processes' medians for each setting, the speedup (default / kept) of those medians and the
median of the per-round speedups (which pair processes run back to back), the minor page
faults per call, and the peak resident memory of the timed calls.

    python benchmarks/bench_freed_memory.py                        # four models, 3 rounds
    python benchmarks/bench_freed_memory.py --models sdt_2_512_cifar:4 --rounds 5
    python benchmarks/bench_freed_memory.py --json freed.json --markdown docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from bench_memory import build  # noqa: E402
from harness.environment import (  # noqa: E402
    command_line,
    environment,
    finish,
    freed_memory_policy,
    load_text,
    model_batches,
)
from harness.markdown import save, table  # noqa: E402
from harness.process import PeakMemory, run_in_fresh_process, status_bytes  # noqa: E402
from harness.timing import time_once  # noqa: E402

MiB = 2**20
DEFAULT_MODELS = "sdt_8_384:1,sdt_2_512_cifar:4,spikingresformer_ti:1,spikingresformer_cifar:4"
TASKS = ("infer", "train")
SETTINGS = ("default", "kept")
HEADER = [
    "model", "task", "default ms", "kept ms", "speedup", "paired", "faults/call default",
    "faults/call kept", "peak MiB default", "peak MiB kept", "between calls MiB default",
    "between calls MiB kept",
]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        type=model_batches,
        default=DEFAULT_MODELS,
        help=f"name:batch,... (default {DEFAULT_MODELS})",
    )
    parser.add_argument("--tasks", default=",".join(TASKS), help="infer, train or both")
    parser.add_argument("--rounds", type=int, default=3, help="process pairs per model and task")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per process")
    parser.add_argument("--calls", type=int, default=5, help="timed calls per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--markdown", type=Path, help="write the table here (between its markers)")
    args = parser.parse_args(argv)
    args.command = command_line("bench_freed_memory.py", argv)
    args.tasks = args.tasks.split(",")
    if not set(args.tasks) <= set(TASKS) or not args.tasks:
        parser.error(f"--tasks: expected a comma-separated subset of {TASKS}, got {args.tasks}")
    for option in ("rounds", "calls"):
        if getattr(args, option) < 1:
            parser.error(f"--{option}: expected at least 1, got {getattr(args, option)}")
    return args


def timed_calls(
    memory: PeakMemory, model: str, batch: int, task: str, keep: bool, warmup: int, calls: int,
    threads: int,
) -> dict:  # fmt: skip
    """In a fresh process: the seconds of ``calls`` calls after ``warmup`` and their faults."""
    freed_memory_policy(keep)
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    net, images, labels = build(model, batch)
    if task == "infer":
        net.eval()

        def call() -> None:
            with torch.no_grad():
                net(images)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)

        def call() -> None:
            loss = F.cross_entropy(net(images), labels)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        call()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = [time_once(call) for _ in range(calls)]
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return dict(
        seconds=seconds, faults_per_call=faults / calls, peak_bytes=status_bytes("VmHWM"),
        resident_bytes=status_bytes("VmRSS"),
    )  # fmt: skip


def bench(name: str, batch: int, task: str, args: argparse.Namespace) -> tuple[dict, list]:
    """Alternating fresh processes with each setting: the record and the table row."""
    settings = dict(
        model=name, batch=batch, task=task, warmup=args.warmup, calls=args.calls,
        threads=args.threads,
    )  # fmt: skip
    runs: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    for round_index in range(args.rounds):
        for setting in SETTINGS if round_index % 2 == 0 else SETTINGS[::-1]:
            result = run_in_fresh_process(
                "bench_freed_memory:timed_calls", settings | dict(keep=setting == "kept")
            )
            runs[setting].append(
                dict(median_s=statistics.median(result.value["seconds"]), **result.value)
            )
    median = {s: statistics.median(r["median_s"] for r in runs[s]) for s in SETTINGS}
    paired = statistics.median(
        d["median_s"] / k["median_s"] for d, k in zip(runs["default"], runs["kept"], strict=True)
    )
    faults = {s: statistics.median(r["faults_per_call"] for r in runs[s]) for s in SETTINGS}
    peak = {s: statistics.median(r["peak_bytes"] for r in runs[s]) / MiB for s in SETTINGS}
    resident = {s: statistics.median(r["resident_bytes"] for r in runs[s]) / MiB for s in SETTINGS}
    speedup = median["default"] / median["kept"]
    row = [
        f"{name} b{batch}", task, f"{1e3 * median['default']:.1f}", f"{1e3 * median['kept']:.1f}",
        f"{speedup:.2f}x", f"{paired:.2f}x", f"{faults['default']:.0f}", f"{faults['kept']:.0f}",
        f"{peak['default']:.0f}", f"{peak['kept']:.0f}", f"{resident['default']:.0f}",
        f"{resident['kept']:.0f}",
    ]  # fmt: skip
    record = dict(runs=runs, speedup=speedup, paired_speedup=paired)
    print(" | ".join(row), flush=True)
    return record, row


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    env = environment("cpu", args.threads, args.command)
    records, rows = {}, []
    for name, batch in args.models:
        for task in args.tasks:
            records[f"{name}:{batch}:{task}"], row = bench(name, batch, task, args)
            rows.append(row)
    finish(env)
    text = (
        f"`{args.command}` ({env['date']}, {load_text(env)}; {args.rounds} process pairs per "
        f"row, {args.calls} timed calls each after {args.warmup})\n\n" + table(HEADER, rows)
    )
    print("\n" + text)
    report = dict(environment=env, results=records)
    save("bench_freed_memory", report, text, args.json, args.markdown)
    return report


if __name__ == "__main__":
    main()
