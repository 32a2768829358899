"""Training memory of spikezoo models with a memory saving switched on and off.

``--switch`` picks the saving: ``compaction`` (spikes saved as bits,
``model.set_spike_compaction``) or ``bn-neuron-fusion`` (each BatchNorm fused with the neuron
after it, ``spikezoo.layers.set_bn_neuron_fusion``; spike compaction stays on). For each model
and batch size, every repetition runs two fresh processes (``harness.process``), one with the
saving on (the default) and one with it off, in alternating order. Each process builds the model and
an optimizer, runs ``--steps`` training steps (forward, cross-entropy on random labels, backward,
optimizer step) on random images and reports the rise of its peak memory over those steps: on a
CPU the resident high-water mark (Linux ``VmHWM``, reset just before the first step), with
``--device cuda`` ``torch.cuda.max_memory_allocated``. ``base`` is the memory in use just before
the first step (resident, or allocated on CUDA), ``peak`` = base + rise. The table gives the
medians over ``--repeats`` processes with the min-max range, the ratio on/off, the median time of
the steps after the first, and the bytes saved for backward as
:func:`spikezoo.analysis.measure_saved_tensors` counts them (deterministic). ``--blocks`` also
prints the per-block table of saved tensors.

    python benchmarks/bench_memory.py                    # both default models, 3 repeats
    python benchmarks/bench_memory.py --models sdt_2_512_cifar:16 --repeats 5 --blocks
    python benchmarks/bench_memory.py --json memory.json --markdown docs/benchmarks.md
    python benchmarks/bench_memory.py --switch bn-neuron-fusion --models sdt_2_512_cifar:16
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from harness.environment import (  # noqa: E402
    command_line,
    environment,
    finish,
    load_text,
    model_batches,
)
from harness.markdown import save, table  # noqa: E402
from harness.process import PeakMemory, run_in_fresh_process, status_bytes  # noqa: E402
from harness.timing import time_once  # noqa: E402

MiB = 2**20
DEFAULT_MODELS = "sdt_2_512_cifar:16,spikingresformer_cifar:8"
SWITCHES = ("compaction", "bn-neuron-fusion")
HEADER = ["model", "switch", "peak MiB", "base MiB", "peak - base", "saved MiB", "step s"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        type=model_batches,
        default=DEFAULT_MODELS,
        help=f"name:batch,... (default {DEFAULT_MODELS})",
    )
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per setting")
    parser.add_argument("--steps", type=int, default=3, help="training steps per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    parser.add_argument(
        "--device", default="cpu", help="cpu, or cuda: peak = torch.cuda.max_memory_allocated"
    )
    parser.add_argument(
        "--switch", choices=SWITCHES, default="compaction", help="the saving turned on and off"
    )
    parser.add_argument("--blocks", action="store_true", help="print the per-block tables")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument(
        "--markdown", type=Path, help="write the table here (between its bench_memory markers)"
    )
    args = parser.parse_args(argv)
    args.command = command_line("bench_memory.py", argv)
    return args


def build(name: str, batch: int, seed: int = 0):
    """The model in training mode, a batch of random images ``[B, C, H, W]`` and labels ``[B]``."""
    import timm
    import torch

    import spikezoo  # noqa: F401  (registers the models with timm)

    torch.manual_seed(seed)
    model = timm.create_model(name).train()
    images = torch.randn(batch, *model.pretrained_cfg["input_size"])
    labels = torch.randint(0, model.num_classes, (batch,))
    return model, images, labels


def set_switch(model, switch: str, enabled: bool) -> None:
    """Turn the saving ``switch`` (one of :data:`SWITCHES`) on or off in ``model``."""
    from spikezoo.layers import set_bn_neuron_fusion

    if switch == "compaction":
        model.set_spike_compaction(enabled)
    else:
        set_bn_neuron_fusion(model, enabled)


def train_steps(
    memory: PeakMemory, model: str, batch: int, switch: str, enabled: bool, steps: int,
    threads: int, optimizer: str, device: str,
) -> dict:  # fmt: skip
    """In a fresh process: ``steps`` training steps; the base memory and each step's seconds."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    net, images, labels = (t.to(device) for t in build(model, batch))
    set_switch(net, switch, enabled)
    params = net.parameters()
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    else:
        opt = torch.optim.AdamW(params, lr=1e-3)

    def step() -> None:
        loss = F.cross_entropy(net(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    cuda = device.startswith("cuda")
    memory.reset(device)
    base = torch.cuda.memory_allocated() if cuda else status_bytes("VmRSS")
    return dict(base_bytes=base, step_s=[time_once(step) for _ in range(steps)])


def saved_tensor_reports(name: str, batch: int, threads: int, switch: str) -> dict:
    """``measure_saved_tensors`` of one forward pass, the saving off (False) and on (True)."""
    import torch

    from spikezoo.analysis import measure_saved_tensors

    torch.set_num_threads(threads)
    model, images, _ = build(name, batch)
    if switch == "compaction":
        return {on: measure_saved_tensors(model, images, compact=on) for on in (False, True)}
    reports = {}
    for on in (False, True):
        set_switch(model, switch, on)
        reports[on] = measure_saved_tensors(model, images, compact=True)
    return reports


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def bench_model(name: str, batch: int, args: argparse.Namespace) -> tuple[dict, list[list]]:
    """Fresh processes with compaction on and off: the record and the table rows."""
    reports = saved_tensor_reports(name, batch, args.threads, args.switch)
    settings = dict(
        model=name, batch=batch, steps=args.steps, threads=args.threads,
        optimizer=args.optimizer, device=args.device, switch=args.switch,
    )  # fmt: skip
    # one unrecorded run first: the neuron kernels compile into the on-disk cache
    run_in_fresh_process("bench_memory:train_steps", settings | dict(enabled=True))
    runs: dict[str, list[dict]] = {"on": [], "off": []}
    for repeat in range(args.repeats):
        for switch in ("on", "off") if repeat % 2 == 0 else ("off", "on"):
            kwargs = settings | dict(enabled=switch == "on")
            result = run_in_fresh_process("bench_memory:train_steps", kwargs)
            runs[switch].append(
                dict(
                    peak_bytes=result.value["base_bytes"] + result.peak_bytes,
                    rise_bytes=result.peak_bytes, counter=result.counter, **result.value,
                )
            )  # fmt: skip
    peaks = {s: [r["peak_bytes"] / MiB for r in runs[s]] for s in runs}
    bases = {s: [r["base_bytes"] / MiB for r in runs[s]] for s in runs}
    rises = {s: [r["rise_bytes"] / MiB for r in runs[s]] for s in runs}
    steps = {s: [t for r in runs[s] for t in r["step_s"][1:]] for s in runs}
    rows = []
    for switch in ("on", "off"):
        rows.append(
            [
                f"{name} b{batch}", f"{args.switch} {switch}", _summary(peaks[switch]),
                _summary(bases[switch]),
                f"{statistics.median(rises[switch]):.0f}",
                f"{reports[switch == 'on'].kept_nbytes / MiB:.0f}",
                f"{statistics.median(steps[switch]):.2f}" if steps[switch] else "-",
            ]
        )  # fmt: skip
    ratio = statistics.median(peaks["on"]) / statistics.median(peaks["off"])
    time_ratio = (
        statistics.median(steps["on"]) / statistics.median(steps["off"]) if steps["on"] else None
    )
    rows.append([f"{name} b{batch}", "on / off", f"{ratio:.2f}", "", "", "", _ratio(time_ratio)])
    if args.blocks:
        print(f"\n{name}, batch {batch}: saved for backward, per block\n")
        print(reports[True].per_block().to_markdown())
    record = {
        "runs": runs,
        "saved_bytes": {s: reports[s == "on"].kept_nbytes for s in ("on", "off")},
        "peak_ratio_on_off": ratio,
        "step_time_ratio_on_off": time_ratio,
        "counter": runs["on"][0]["counter"],
    }
    return record, rows


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    env = environment(args.device, args.threads, args.command, ("spikezoo-vit", "timm"))
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "markdown")}
    report: dict = {"environment": env, "settings": settings, "models": {}}
    rows = []
    for name, batch in args.models:
        print(f"{name}, batch {batch} ...", file=sys.stderr, flush=True)
        report["models"][f"{name}:{batch}"], model_rows = bench_model(name, batch, args)
        rows += model_rows
    finish(env)
    text = "\n".join(
        [
            f"Run: {env['date']}, {env['device']}, {args.threads} threads, {load_text(env)}.",
            "",
            f"Command: `{args.command}`",
            "",
            table(HEADER, rows),
        ]
    )
    print(text)
    save("bench_memory", report, text, args.json, args.markdown)
    return report


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
