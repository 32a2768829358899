"""Issue 20's GPU checks: training throughput against the authors' code, and the LIF roofline.

Three parts, each run on its own (``--part``) so that ``run_gpu.sh`` can bound each by a timeout:

- ``training``: images/s of a training step (forward, cross-entropy, backward, SGD step with
  momentum) for ``sdt_8_768`` and ``spikingresformer_s`` at the authors' per-GPU batch sizes
  (SDT ``conf/imagenet/8_768_300E_t4.yml``: 36; SpikingResformer
  ``configs/main/spikingresformer_s.yaml``: 32), 224x224. spikezoo runs under bf16 autocast,
  the authors' code (``benchmarks/peers/authors.py``, spikingjelly 0.0.0.0.14) in float32 with
  its CuPy neurons, which cannot run bf16. Random weights for both (throughput does not depend
  on them). Target: spikezoo >= 2x the authors' images/s.
- ``lif``: ``MultiStepLIF`` forward+backward at T = 4 and 16 (N = 8M neurons), on the
  ``cupy`` and ``inductor`` backends and on ``cupy-membranes`` (``cupy`` keeping its charged
  membranes in training, as before its backward from the input), as a fraction of the copy
  bandwidth the device reaches in the same run (``dst.copy_(src)`` of a tensor of the same
  size: read once, written once).
  The traffic counted is issue 20's six ``[T, N]`` float32 tensors (forward: read ``x``,
  write the spikes and the charged membranes; backward: read the gradient and the membranes,
  write ``dx``), what ``cupy-membranes`` moves; ``cupy`` and ``inductor`` move five, since
  their backward kernels charge the membranes again from ``x`` instead of reading them.
  Target: >= 60 %. Each backend's call is also profiled once: its kernels' device time,
  against the call's time, says how much the host and the launches add.
- ``profile``: where a training step's time goes, for the models of ``training``: spikezoo in
  bf16 autocast (as is, channels-last, without BatchNorm fusion, without spike compaction,
  and without both) and in float32, the authors in float32. For each, the step's wall time
  (median of three synchronised steps) and the peak of ``torch.cuda.max_memory_allocated``
  over those steps, the device time of one profiled step (``torch.profiler``: the sum of every
  kernel's self time; a wall time well above it means the host cannot keep the device busy),
  the places where one step makes the host wait for the device
  (``torch.cuda.set_sync_debug_mode``) and the 20 kernels that take the most device time.

Time: ``harness.timing`` (first call apart, ``blocked_autorange`` warm-up, interleaved rounds,
medians). ``--dry-run`` runs the same steps on the CPU, tiny (small models at 32x32, batch 2,
N = 4096, one round, the eager neuron loops instead of compiling them), so that everything the
GPU run checks is checkable without a GPU; its numbers mean nothing.

    python benchmarks/bench_gpu.py --part training --json training.json
    python benchmarks/bench_gpu.py --part lif --json lif.json
    python benchmarks/bench_gpu.py --part profile --json profile.json
    python benchmarks/bench_gpu.py --part training --dry-run
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from harness.environment import command_line, environment, finish, load_text  # noqa: E402
from harness.markdown import table  # noqa: E402
from harness.timing import error_text, interleaved, time_once  # noqa: E402

#: model -> the authors' per-GPU training batch size (see the module docstring).
BATCH_SIZES = {"sdt_8_768": 36, "spikingresformer_s": 32}
#: tiny versions for ``--dry-run`` (same layers, a fraction of the work).
TINY_MODELS = {
    "sdt_8_768": dict(embed_dim=32, depth=1, num_heads=4, pooling_stat="0011", img_size=32),
    "spikingresformer_s": dict(
        embed_dims=(16, 32), num_heads=(1, 2), depths=(1, 1), patch_sizes=(2, 1),
        group_size=16, stem="conv3x3", img_size=32,
    ),
}  # fmt: skip
SPEEDUP_TARGET = 2.0
ROOFLINE_TARGET = 0.6
LIF_TENSORS_MOVED = 6
#: A backend name with this suffix is that backend keeping its charged membranes in training
#: (no backward from the input): ``cupy-membranes`` is what ``cupy`` ran before 2026-12-04.
KEEPS_MEMBRANES = "-membranes"
LIF_BACKENDS = ("cupy", "cupy" + KEEPS_MEMBRANES, "inductor")
STEPS = (4, 16)
PROFILE_TOP = 20


def training_step(model: torch.nn.Module, images, labels, optimizer, autocast: bool) -> None:
    """One step: forward (under bf16 autocast if ``autocast``), cross-entropy, backward, SGD."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _spikezoo_model(name: str, dry_run: bool) -> torch.nn.Module:
    import timm

    import spikezoo  # noqa: F401  (registers the models with timm)
    from spikezoo.neurons import set_backend

    if not dry_run:
        return timm.create_model(name)
    # the eager neuron loops: a CPU compile would take longer than the whole dry run
    return set_backend(timm.create_model(name, **TINY_MODELS[name]), "torch")


def _authors_model(name: str, device: torch.device, dry_run: bool) -> torch.nn.Module:
    """The authors' model on its CuPy neurons; ``RuntimeError`` if it cannot run here."""
    from peers.authors import build_authors_model

    if dry_run:
        raise RuntimeError("the authors' full-size model is not built in a dry run")
    model, backend = build_authors_model(name, device)
    if device.type == "cuda" and backend != "cupy":
        raise RuntimeError(f"the authors' CuPy neurons cannot run here (backend {backend})")
    return model


def _batch(full_batch: int, args: argparse.Namespace, device: torch.device) -> tuple:
    """``(batch, img_size, images, labels)`` of a training step: the full batch at 224 px, or
    2 images at 32 px in a dry run."""
    batch = 2 if args.dry_run else full_batch
    size = 32 if args.dry_run else 224
    torch.manual_seed(args.seed)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    return batch, size, images, labels


def bench_training(args: argparse.Namespace) -> dict:
    """images/s of spikezoo (bf16 autocast) and the authors (float32) for each model."""
    device = torch.device(args.device)
    results = {}
    for name, full_batch in BATCH_SIZES.items():
        batch, size, images, labels = _batch(full_batch, args, device)
        calls, notes = {}, {}
        implementations = {
            "spikezoo bf16": partial(_spikezoo_model, name, args.dry_run),
            "authors fp32": partial(_authors_model, name, device, args.dry_run),
        }
        for label, build in implementations.items():
            try:
                model = build().to(device).train()
            except Exception as error:  # reported in the table, the other row goes on
                notes[label] = error_text(error)
                continue
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            calls[label] = partial(
                training_step, model, images, labels, optimizer, label.endswith("bf16")
            )
        timings = interleaved(
            calls, repeats=args.repeats, threads=torch.get_num_threads(),
            warmup_rounds=args.warmup, label=name, sub_label=f"batch {batch}",
        )  # fmt: skip
        rows = {}
        for label in implementations:
            if label in notes or timings[label].measurement is None:
                rows[label] = {"error": notes.get(label) or timings[label].error}
                continue
            median = timings[label].median_s
            rows[label] = timings[label].to_dict() | {"images_per_s": batch / median}
        speedup = None
        if all("images_per_s" in row for row in rows.values()):
            speedup = rows["spikezoo bf16"]["images_per_s"] / rows["authors fp32"]["images_per_s"]
        results[name] = {"batch": batch, "img_size": size, "rows": rows, "speedup": speedup}
    return results


def _switched(
    build: Callable[[], torch.nn.Module], *, fusion: bool, compaction: bool
) -> torch.nn.Module:
    """``build()`` with BatchNorm+neuron fusion and spike compaction switched as given: what
    each memory feature costs and saves, apart."""
    from spikezoo.layers.bn_neuron import set_bn_neuron_fusion

    model = build()
    set_bn_neuron_fusion(model, fusion)
    model.set_spike_compaction(compaction)
    return model


def _channels_last(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``build()`` with its convolution weights channels-last (the images are made so too)."""
    return build().to(memory_format=torch.channels_last)


def _implementations(name: str, device: torch.device, dry_run: bool) -> dict:
    """label -> (model builder, bf16 autocast, channels-last) for the profile part."""
    spikezoo = partial(_spikezoo_model, name, dry_run)
    return {
        "spikezoo bf16": (spikezoo, True, False),
        "spikezoo bf16, channels-last": (partial(_channels_last, spikezoo), True, True),
        "spikezoo bf16, unfused": (
            partial(_switched, spikezoo, fusion=False, compaction=True),
            True,
            False,
        ),
        "spikezoo bf16, uncompacted": (
            partial(_switched, spikezoo, fusion=True, compaction=False),
            True,
            False,
        ),
        "spikezoo bf16, unfused, uncompacted": (
            partial(_switched, spikezoo, fusion=False, compaction=False),
            True,
            False,
        ),
        "spikezoo fp32": (spikezoo, False, False),
        "authors fp32": (partial(_authors_model, name, device, dry_run), False, False),
    }


def _profile_step(step: Callable[[], None], device: torch.device) -> dict:
    """Wall seconds of ``step()`` (median of three) and the device time of one profiled step."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    wall = sorted(time_once(step) for _ in range(3))[1]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    if device.type == "cuda":  # the kernels themselves (an operator's row would count them twice)
        events = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA]
        own = "self_device_time_total"
    else:
        events, own = prof.key_averages(), "self_cpu_time_total"
    ranked = sorted(events, key=lambda event: getattr(event, own), reverse=True)
    return {
        "synchronisations": _synchronisations(step) if device.type == "cuda" else None,
        "wall_s": wall,
        "peak_bytes": peak,
        "device_s": sum(getattr(event, own) for event in events) * 1e-6,
        "top": [(event.key[:70], getattr(event, own) * 1e-6) for event in ranked[:PROFILE_TOP]],
    }


def _synchronisations(step: Callable[[], None]) -> dict[str, int]:
    """Where one ``step()`` makes the host wait for the device: call site -> times."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sites = Counter(
        f"{Path(w.filename).parent.name}/{Path(w.filename).name}:{w.lineno}"
        for w in caught
        # the waits; not the warning that the debug mode is a prototype, on first use
        if "called a synchronizing" in str(w.message)
    )
    return dict(sites.most_common())


def bench_profile(args: argparse.Namespace) -> dict:
    """Each implementation's step time, device time and heaviest operations, per model."""
    device = torch.device(args.device)
    results = {}
    for name, full_batch in BATCH_SIZES.items():
        batch, size, images, labels = _batch(full_batch, args, device)
        rows = {}
        implementations = _implementations(name, device, args.dry_run)
        for label, (build, autocast, channels_last) in implementations.items():
            try:
                model = build().to(device).train()
                optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
                layout = torch.channels_last if channels_last else torch.contiguous_format
                inputs = images.contiguous(memory_format=layout)
                step = partial(training_step, model, inputs, labels, optimizer, autocast)
                rows[label] = _profile_step(step, device)
            except Exception as error:  # reported in the table, the other rows go on
                rows[label] = {"error": error_text(error)}
            finally:
                model = optimizer = step = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        results[name] = {"batch": batch, "img_size": size, "rows": rows}
    return results


def _copy_bandwidth(nbytes: int, device: torch.device, repeats: int) -> float:
    """Bytes/s of ``dst.copy_(src)`` for a float32 tensor of ``nbytes`` (read + write)."""
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    (timing,) = interleaved(
        {"copy": partial(dst.copy_, src)}, repeats=repeats, threads=torch.get_num_threads()
    ).values()
    return 2 * nbytes / timing.median_s


def _lif_call(backend: str, x: torch.Tensor, g: torch.Tensor) -> None:
    from spikezoo.neurons import multistep_lif

    leaf = x.detach().requires_grad_()
    spikes = multistep_lif(leaf, alpha=4.0, backend=backend)
    torch.autograd.grad(spikes, leaf, g)


def _register_keeping_membranes(name: str) -> None:
    """Register ``name`` (``<backend>-membranes``, see :data:`KEEPS_MEMBRANES`), once."""
    from spikezoo.neurons.backends import backend_names, get_backend, register_backend

    if name not in backend_names():
        base = get_backend(name.removesuffix(KEEPS_MEMBRANES))
        register_backend(replace(base, name=name, backward_from_input=None), auto=False)


def bench_lif(args: argparse.Namespace) -> dict:
    """Each backend's forward+backward at each T as a fraction of the copy bandwidth."""
    from spikezoo.neurons.backends import get_backend

    for name in args.lif_backends:
        if name.endswith(KEEPS_MEMBRANES):
            _register_keeping_membranes(name)
    device = torch.device(args.device)
    neurons = 4096 if args.dry_run else args.neurons
    results = {}
    for steps in STEPS:
        gen = torch.Generator(device=device).manual_seed(args.seed)
        x = torch.randn(steps, neurons, generator=gen, device=device) * 2 + 1
        g = torch.randn(steps, neurons, generator=gen, device=device)
        nbytes = x.numel() * 4
        copy = _copy_bandwidth(nbytes, device, args.repeats)
        calls, rows = {}, {}
        for backend in args.lif_backends:
            reason = get_backend(backend).unavailable_reason(x)
            if reason is not None:
                rows[backend] = {"error": reason}
            else:
                calls[backend] = partial(_lif_call, backend, x, g)
        timings = interleaved(
            calls, repeats=args.repeats, threads=torch.get_num_threads(),
            warmup_rounds=args.warmup, label="LIF fwd+bwd", sub_label=f"T={steps}",
        )  # fmt: skip
        for backend, timing in timings.items():
            if timing.measurement is None:
                rows[backend] = {"error": timing.error}
                continue
            bandwidth = LIF_TENSORS_MOVED * nbytes / timing.median_s
            rows[backend] = timing.to_dict() | {
                "bandwidth_bytes_per_s": bandwidth,
                "fraction_of_copy": bandwidth / copy,
                # the kernels' own time against the call's: what the host and the launches add
                "profile": _profile_step(calls[backend], device),
            }
        results[steps] = {"neurons": neurons, "copy_bytes_per_s": copy, "rows": rows}
    return results


def markdown(report: dict) -> str:
    """The run's context and one table per part that ran."""
    env = report["environment"]
    lines = [
        f"- run: {env['date']}; {env['device']}; {load_text(env)}",
        f"- command: `{env['command']}`",
    ]
    if report["dry_run"]:
        lines.append("- **dry run** (CPU, tiny sizes): checks the steps, the numbers mean nothing")
    lines.append("")
    if "training" in report:
        cells = []
        for name, result in report["training"].items():
            for label, row in result["rows"].items():
                speed = f"{row['images_per_s']:.1f}" if "images_per_s" in row else row["error"]
                cells.append([name, result["batch"], label, speed])
            speedup = result["speedup"]
            verdict = "-" if speedup is None else f"{speedup:.2f}x (target {SPEEDUP_TARGET}x)"
            cells.append([name, result["batch"], "spikezoo / authors", verdict])
        lines += [table(["model", "batch", "implementation", "images/s"], cells), ""]
    if "lif" in report:
        cells = []
        for steps, result in report["lif"].items():
            for backend, row in result["rows"].items():
                if "error" in row:
                    cells.append([steps, result["neurons"], backend, row["error"], "-", "-", "-"])
                    continue
                kernels = row["profile"]
                top = "; ".join(f"{op} {seconds * 1e3:.3f}" for op, seconds in kernels["top"][:4])
                cells.append(
                    [
                        steps, result["neurons"], backend, f"{row['median_s'] * 1e3:.3f}",
                        f"{row['fraction_of_copy']:.2f} (target {ROOFLINE_TARGET})",
                        f"{kernels['device_s'] * 1e3:.3f}", top,
                    ]
                )  # fmt: skip
            copy = result["copy_bytes_per_s"] / 1e9
            lines.append(f"- T={steps}: copy bandwidth {copy:.0f} GB/s")
        header = ["T", "N", "backend", "fwd+bwd ms", "of copy bandwidth", "kernels ms", "heaviest"]
        lines += ["", table(header, cells)]
    profile_header = [
        "implementation", "step ms", "device ms", "peak MiB", "host waits: where", "heaviest (ms)"
    ]  # fmt: skip
    for name, result in report.get("profile", {}).items():
        cells = []
        for label, row in result["rows"].items():
            if "error" in row:
                cells.append([label, row["error"], "-", "-", "-", "-"])
                continue
            top = "; ".join(f"{op} {seconds * 1e3:.1f}" for op, seconds in row["top"])
            peak = "-" if row["peak_bytes"] is None else f"{row['peak_bytes'] / 2**20:.0f}"
            wall, busy = row["wall_s"] * 1e3, row["device_s"] * 1e3
            sites = row["synchronisations"]
            waits = (
                "-"
                if sites is None
                else f"{sum(sites.values())}: "
                + ", ".join(f"{site} x{count}" for site, count in list(sites.items())[:3])
            )
            cells.append([label, f"{wall:.1f}", f"{busy:.1f}", peak, waits, top])
        lines += [
            "",
            f"{name}, batch {result['batch']}, {result['img_size']} px:",
            "",
            table(profile_header, cells),
        ]
    return "\n".join(lines)


PARTS = {"training": bench_training, "lif": bench_lif, "profile": bench_profile}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=tuple(PARTS), required=True)
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --dry-run)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, one round")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 5; dry 1)")
    parser.add_argument("--warmup", type=int, default=None, help="unmeasured rounds (default 1)")
    parser.add_argument("--neurons", type=int, default=8 * 2**20, help="LIF N (default 8M)")
    parser.add_argument(
        "--lif-backends",
        default=None,
        help="default: cupy,cupy-membranes,inductor (dry run: cupy,cupy-membranes,torch)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--markdown", type=Path, help="write the tables here")
    args = parser.parse_args(argv)
    args.command = command_line("bench_gpu.py", argv)
    args.device = args.device or ("cpu" if args.dry_run else "cuda")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --dry-run to check the steps)")
    args.repeats = args.repeats or (1 if args.dry_run else 5)
    args.warmup = (0 if args.dry_run else 1) if args.warmup is None else args.warmup
    if args.lif_backends is None:  # the dry run: eager loops (no compile); cupy says why not
        dry = ("cupy", "cupy" + KEEPS_MEMBRANES, "torch")
        args.lif_backends = ",".join(dry if args.dry_run else LIF_BACKENDS)
    args.lif_backends = [name for name in args.lif_backends.split(",") if name]
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    env = environment(args.device, torch.get_num_threads(), args.command, ("spikezoo-vit",))
    report: dict = {"environment": env, "dry_run": args.dry_run}
    report[args.part] = PARTS[args.part](args)
    finish(env)
    text = markdown(report)
    print(text, flush=True)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return report


if __name__ == "__main__":
    main()
