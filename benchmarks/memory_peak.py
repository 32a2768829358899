"""What is alive at the peak of one training step, by the operation that allocated it.

For spikezoo and the authors' code (same weights, :mod:`whole_models.zoo`), one training step
of :func:`whole_models.calls.make_call` runs once unmeasured (the optimizer's momentum is then
allocated, as in ``bench_models.py``), then once under ``torch.profiler`` with
``profile_memory``. Replaying the CPU allocator's allocations and frees in time order gives the
peak above the start (the number ``bench_models.py`` reports) and the blocks alive at that
moment, grouped by phase (forward, or the backward node running) and by the innermost
operation that allocated them. A forward allocation alive at the peak is what autograd kept.

    python benchmarks/memory_peak.py sdt_2_512_cifar --batch 4
    python benchmarks/memory_peak.py sdt_8_384 --batch 1 --impls spikezoo,authors
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import torch  # noqa: E402
from torch._C._profiler import _EventType  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

MiB = 2**20


def allocations(call) -> list[tuple[int, int, int, tuple[str, ...]]]:
    """``call()`` profiled: ``(time ns, address, bytes (negative: freed), enclosing ops)``."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    found = []

    def walk(node, ops: tuple[str, ...]) -> None:
        if node.tag == _EventType.Allocation:
            fields = node.extra_fields
            if fields.device.type == "cpu":
                found.append((node.start_time_ns, fields.ptr, fields.alloc_size, ops))
            return
        for child in node.children:
            walk(child, (*ops, node.name))

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root, ())
    return sorted(found, key=lambda a: a[0])


def alive_at_peak(events: list) -> tuple[int, list[tuple[int, tuple[str, ...]]]]:
    """The peak bytes above the start and the ``(bytes, ops)`` of each block alive then."""
    alive: dict[int, tuple[int, tuple[str, ...]]] = {}
    current = peak = 0
    at_peak: list = []
    for _, address, nbytes, ops in events:
        if nbytes > 0:
            alive[address] = (nbytes, ops)
            current += nbytes
        elif address in alive:  # blocks allocated before the step are not counted
            current -= alive.pop(address)[0]
        if current > peak:
            peak, at_peak = current, list(alive.values())
    return peak, at_peak


def label(ops: tuple[str, ...]) -> tuple[str, str]:
    """``(phase, operation)``: "forward" or the backward node, and the innermost aten op."""
    node = next((op for op in ops if op.startswith("autograd::engine::evaluate_function")), None)
    phase = "forward" if node is None else "backward " + node.split(": ")[-1]
    aten = [op for op in ops if op.startswith("aten::") or op.startswith("## Call Compiled")]
    return phase, (aten[-1] if aten else ops[-1] if ops else "?")


def main(argv: list[str] | None = None) -> None:
    from whole_models.calls import make_call
    from whole_models.zoo import MODELS, build_weights

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--impls", default="spikezoo,authors")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=12, help="rows per implementation")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = MODELS[args.model]
    device = torch.device("cpu")
    impls = args.impls.split(",")
    shared = build_weights(spec, device, args.batch, 0, "authors" in impls)
    torch.manual_seed(1)
    images = torch.randn(args.batch, 3, spec.img_size, spec.img_size)
    labels = torch.randint(0, shared["spikezoo"].num_classes, (args.batch,))
    models = {"spikezoo": shared["spikezoo"], "authors": shared.get("authors", (None,))[0]}
    peaks = {}
    for impl in impls:
        if models.get(impl) is None:
            parser.error(f"--impls: {impl!r} is not available (spikezoo, authors with the peers)")
        call = make_call(models[impl], "train", images, labels, "fp32", device)
        call()
        peak, alive = alive_at_peak(allocations(call))
        peaks[impl] = peak
        groups: collections.Counter = collections.Counter()
        phases: collections.Counter = collections.Counter()
        for nbytes, ops in alive:
            phase, op = label(ops)
            groups[phase, op] += nbytes
            phases[phase.split(" ")[0]] += nbytes
        print(f"\n{impl}, {args.model}, batch {args.batch}: peak {peak / MiB:.1f} MiB above start")
        print("  " + ", ".join(f"{p} {b / MiB:.1f} MiB" for p, b in phases.items()))
        for (phase, op), nbytes in groups.most_common(args.top):
            print(f"  {nbytes / MiB:8.2f} MiB  {phase:40s} {op}")
    if "authors" in peaks and "spikezoo" in peaks:
        print(f"\nspikezoo / authors: {peaks['spikezoo'] / peaks['authors']:.2f}")


if __name__ == "__main__":
    main()
