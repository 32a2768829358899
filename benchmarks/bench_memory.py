"""Training memory of spikezoo models with and without spike compaction.

For each model and batch size, every repetition starts fresh processes, one with spike
compaction on (the default) and one with it off (``model.set_spike_compaction(False)``), in
alternating order. Each process builds the model and an optimizer, runs ``--steps`` training
steps (forward, cross-entropy on random labels, backward, optimizer step) on random images and
reports its peak resident memory (with ``--device cuda``: the peak of
``torch.cuda.max_memory_allocated``, and ``base`` the memory allocated before the first step).
The table gives the medians over ``--repeats`` processes with the min-max range, the ratio
on/off, the median time of the steps after the first, and the bytes saved for backward as
:func:`spikezoo.analysis.measure_saved_tensors` counts them (deterministic). ``--blocks``
also prints the per-block table of saved tensors.

Peak memory is Linux's ``VmHWM`` (the process's resident high-water mark, from
``/proc/self/status``) at the end of the last step: everything the process held at its peak,
torch and the model included. ``base MiB`` is the resident memory just before the first step
(after the model and the optimizer were built), and ``peak - base`` the part the training steps
added. Where ``VmHWM`` is missing, ``ru_maxrss`` is used (the children are started through a
small launcher so that it does not inherit this process's).

    python benchmarks/bench_memory.py                    # both default models, 3 repeats
    python benchmarks/bench_memory.py --models sdt_2_512_cifar:16 --repeats 5 --blocks
    python benchmarks/bench_memory.py --json memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CHILD_MARK = "@@bench_memory "
LAUNCHER = "import os, sys; os.execv(sys.executable, [sys.executable] + sys.argv[1:])"
MiB = 2**20
DEFAULT_MODELS = "sdt_2_512_cifar:16,spikingresformer_cifar:8"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", default=DEFAULT_MODELS, help=f"name:batch,... (default {DEFAULT_MODELS})"
    )
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per setting")
    parser.add_argument("--steps", type=int, default=3, help="training steps per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    parser.add_argument(
        "--device", default="cpu", help="cpu, or cuda: peak = torch.cuda.max_memory_allocated"
    )
    parser.add_argument("--blocks", action="store_true", help="print the per-block tables")
    parser.add_argument("--json", metavar="PATH", help="write every measurement here")
    parser.add_argument("--child", metavar="MODEL:BATCH:on|off", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def status_bytes(field: str) -> int | None:
    """A ``/proc/self/status`` memory field (``VmHWM``, ``VmRSS``) in bytes, if there is one."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> tuple[int, str]:
    hwm = status_bytes("VmHWM")
    if hwm is not None:
        return hwm, "VmHWM"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss if sys.platform == "darwin" else rss * 1024), "ru_maxrss"


def build(name: str, batch: int, seed: int = 0):
    import timm
    import torch

    import spikezoo.models  # noqa: F401  (registers the models with timm)

    torch.manual_seed(seed)
    model = timm.create_model(name).train()
    images = torch.randn(batch, *model.pretrained_cfg["input_size"])
    labels = torch.randint(0, model.num_classes, (batch,))
    return model, images, labels


def child_main(spec: str, args: argparse.Namespace) -> None:
    """Fresh process: peak RSS of ``args.steps`` training steps of one model."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    name, batch, switch = spec.split(":")
    model, images, labels = build(name, int(batch))
    model, images, labels = (t.to(args.device) for t in (model, images, labels))
    model.set_spike_compaction(switch == "on")
    cuda = images.is_cuda
    params = model.parameters()
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    else:
        optimizer = torch.optim.AdamW(params, lr=1e-3)
    base = torch.cuda.memory_allocated() if cuda else status_bytes("VmRSS")
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        del loss
    if cuda:
        peak, counter = torch.cuda.max_memory_allocated(), "max_memory_allocated"
    else:
        peak, counter = peak_rss_bytes()
    result = dict(peak_bytes=peak, counter=counter, base_bytes=base, step_s=times)
    print(CHILD_MARK + json.dumps(result), flush=True)


def run_child(spec: str, args: argparse.Namespace) -> dict:
    cmd = [os.path.abspath(__file__), "--child", spec]
    cmd += ["--steps", str(args.steps), "--threads", str(args.threads)]
    cmd += ["--optimizer", args.optimizer, "--device", args.device]
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *cmd],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(CHILD_MARK):
            return json.loads(line[len(CHILD_MARK) :])
    raise RuntimeError(f"{spec}: child exited with {proc.returncode}:\n{proc.stderr[-3000:]}")


def saved_tensor_reports(name: str, batch: int, threads: int) -> dict:
    import torch

    from spikezoo.analysis import measure_saved_tensors

    torch.set_num_threads(threads)
    model, images, _ = build(name, batch)
    return {
        compact: measure_saved_tensors(model, images, compact=compact) for compact in (False, True)
    }


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def main() -> None:
    args = parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if args.child:
        child_main(args.child, args)
        return
    rows, record = [], {"args": vars(args), "models": {}}
    for entry in args.models.split(","):
        name, batch = entry.split(":")
        reports = saved_tensor_reports(name, int(batch), args.threads)
        # one unrecorded run first: the neuron kernels compile into the on-disk cache
        run_child(f"{name}:{batch}:on", args)
        runs: dict[str, list[dict]] = {"on": [], "off": []}
        for repeat in range(args.repeats):
            for switch in ("on", "off") if repeat % 2 == 0 else ("off", "on"):
                runs[switch].append(run_child(f"{name}:{batch}:{switch}", args))
        peaks = {s: [r["peak_bytes"] / MiB for r in runs[s]] for s in runs}
        bases = {s: [r["base_bytes"] / MiB for r in runs[s]] for s in runs}
        steps = {s: [t for r in runs[s] for t in r["step_s"][1:]] for s in runs}
        for switch in ("on", "off"):
            report = reports[switch == "on"]
            rows.append(
                [
                    f"{name} b{batch}",
                    switch,
                    summary(peaks[switch]),
                    summary(bases[switch]),
                    f"{statistics.median(peaks[switch]) - statistics.median(bases[switch]):.0f}",
                    f"{report.kept_nbytes / MiB:.0f}",
                    f"{statistics.median(steps[switch]):.2f}" if steps[switch] else "-",
                ]
            )
        ratio = statistics.median(peaks["on"]) / statistics.median(peaks["off"])
        time_ratio = (
            statistics.median(steps["on"]) / statistics.median(steps["off"])
            if steps["on"]
            else None
        )
        ratios = [f"{ratio:.2f}", "", "", "", _ratio(time_ratio)]
        rows.append([f"{name} b{batch}", "on / off", *ratios])
        record["models"][entry] = {
            "runs": runs,
            "saved_bytes": {s: reports[s == "on"].kept_nbytes for s in ("on", "off")},
            "peak_ratio_on_off": ratio,
            "step_time_ratio_on_off": time_ratio,
            "counter": runs["on"][0]["counter"],
        }
        if args.blocks:
            print(f"\n{name}, batch {batch}: saved for backward, per block\n")
            print(reports[True].per_block().to_markdown())
    header = ["model", "compaction", "peak MiB", "base MiB", "peak - base", "saved MiB", "step s"]
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
