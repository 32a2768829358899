"""The driver: per model, build the implementations, check them, time them, profile spikezoo."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from collections.abc import Callable

import torch
from harness.environment import environment, finish, freed_memory_policy
from harness.memory import METHOD, peak_allocated
from harness.timing import Timing, compare, interleaved, ratio
from torch import Tensor

from whole_models.agreement import check_agreement
from whole_models.calls import make_call
from whole_models.roofline import layer_profile, machine_limits
from whole_models.share import available, time_outside_conv_matmul
from whole_models.zoo import MODELS, TASKS, ModelSpec, Runner, build_runners, build_weights

PACKAGES = ("spikezoo-vit", "timm", "spikingjelly", "cupy-cuda12x", "cupy-cuda13x")


def time_variant(
    runners: list[Runner], task: str, dtype: str, mode: str, x: Tensor, y: Tensor,
    device: torch.device, args: argparse.Namespace, label: str,
) -> tuple[dict[str, Timing], dict[str, Callable[[], None]]]:  # fmt: skip
    """Interleaved rounds of every runner for one (task, dtype, mode); the timings and calls."""
    calls = {}
    for runner in runners:
        model = runner.model
        if mode == "compile":
            # a fresh dynamo cache and static shapes per row: after the rows before it, dynamo
            # would otherwise switch to dynamic shapes, which torch 2.14's inductor cannot lower
            # for these models
            torch._dynamo.reset()
            model = torch.compile(model, dynamic=False)
        calls[runner.name] = make_call(model, task, x, y, dtype, device)
    timings = interleaved(
        calls, repeats=args.repeats, threads=args.threads, warmup_rounds=args.warmup,
        label=label, sub_label=f"{task} {dtype} {mode}",
    )  # fmt: skip
    for name, timing in timings.items():
        if timing.error:
            print(f"    {name} {task} {dtype} {mode} failed: {timing.error}", flush=True)
    return timings, calls


def _variant_result(timings: dict[str, Timing], calls_peak: dict[str, int]) -> dict:
    """The JSON of one variant, with the ratios of spikezoo against every peer."""
    results = {name: timing.to_dict() for name, timing in timings.items()}
    reference = timings.get("spikezoo")
    for name, entry in results.items():
        if name in calls_peak:
            entry["peak_bytes"] = calls_peak[name]
        if reference is not None and reference.measurement and timings[name].measurement:
            entry["speedup_of_spikezoo"] = ratio(timings[name].median_s, reference.median_s)
            entry["spikezoo_memory_ratio"] = ratio(calls_peak.get("spikezoo"), calls_peak.get(name))
    return results


def _variants(spec: ModelSpec, args: argparse.Namespace) -> tuple[list[tuple], dict]:
    """The (dtype, mode) pairs to run for ``spec``, and why the others are not."""
    skipped = {}
    dtypes = [d for d in args.dtypes if d == "fp32" or spec.name in args.bf16_models]
    if dtypes != args.dtypes:
        skipped["bf16"] = (
            "bf16 autocast not run for this model (--bf16-models; by default only on CUDA and on "
            "CPUs with native bf16, since emulated bf16 runs many times slower than float32)"
        )
    pairs = []
    for dtype in dtypes:
        for mode in args.modes:
            if mode == "compile" and spec.name not in args.compile_models:
                skipped[f"compile ({dtype})"] = "not run for this model (--compile-models)"
                continue
            pairs.append((dtype, mode))
    return pairs, skipped


def bench_model(spec: ModelSpec, args: argparse.Namespace, device: torch.device) -> dict:
    """Build, check and time every implementation of one model; its part of the report."""
    batch = args.batch or spec.batch["quick" if args.quick else device.type]
    if args.img_size:
        spec = dataclasses.replace(spec, img_size=args.img_size)
    print(f"== {spec.name} at {spec.img_size}x{spec.img_size}, batch {batch}", flush=True)
    shared = build_weights(spec, device, batch, args.seed, "authors" in args.impls)
    runners, skipped = build_runners(spec, args.impls, shared)
    torch.manual_seed(args.seed + 1)
    x = torch.randn(batch, 3, spec.img_size, spec.img_size, device=device)
    y = torch.randint(0, shared["spikezoo"].num_classes, (batch,), device=device)
    agreement = check_agreement(runners, x, args.atol)
    for runner in list(runners):
        verdict = agreement[runner.name]
        print(
            f"  {runner.name}: max |logit diff| {verdict['max_abs_logit_diff']}, "
            f"spikes {verdict['spikes']} ({'agree' if verdict['agree'] else 'DISAGREE'}"
            f"{', ' + verdict['error'] if 'error' in verdict else ''})",
            flush=True,
        )
        if not verdict["agree"]:
            skipped[runner.name] = "outputs differ from spikezoo's (see agreement); not timed"
            runners.remove(runner)
    pairs, more_skipped = _variants(spec, args)
    skipped |= more_skipped
    variants, all_timings = [], []
    for dtype, mode in pairs:
        for task in TASKS:
            chosen = [
                r for r in runners
                if task in r.tasks
                and (mode == "eager" or (r.compilable and r.name in args.compile_impls))
            ]  # fmt: skip
            if not chosen:
                continue
            print(f"  {task} {dtype} {mode}: {', '.join(r.name for r in chosen)}", flush=True)
            timings, calls = time_variant(chosen, task, dtype, mode, x, y, device, args, spec.name)
            peaks = {
                name: peak_allocated(calls[name], device)
                for name, timing in timings.items()
                if args.memory and timing.measurement is not None
            }
            results = _variant_result(timings, peaks)
            if mode == "eager" and available(device):
                for name, timing in timings.items():
                    if timing.measurement is not None:
                        results[name]["profile"] = time_outside_conv_matmul(
                            calls[name], results[name]["median_s"]
                        )
            variants.append(dict(task=task, dtype=dtype, mode=mode, results=results))
            all_timings.append(timings)
    print(compare(all_timings), flush=True)
    profile = {}
    if args.roofline:
        for dtype in dict.fromkeys(d for d, _ in pairs):
            zoo = copy.deepcopy(shared["spikezoo"])
            profile[dtype] = layer_profile(zoo, x, dtype, device, args.limits, args.top_layers)
    return dict(
        model=spec.name, img_size=spec.img_size, batch=batch,
        implementations={r.name: r.note for r in runners}, skipped=skipped,
        agreement=agreement, variants=variants, roofline=profile,
    )  # fmt: skip


def measure(args: argparse.Namespace) -> dict:
    """Run the benchmark that ``args`` describes: the report."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads)
    report: dict = dict(
        environment=environment(args.device, args.threads, args.command, PACKAGES),
        settings=dict(
            command=args.command, quick=args.quick, repeats=args.repeats, warmup=args.warmup,
            models=args.models, impls=args.impls, dtypes=args.dtypes, modes=args.modes,
            compile_models=args.compile_models, bf16_models=args.bf16_models,
            compile_impls=args.compile_impls, atol=args.atol, seed=args.seed, batch=args.batch,
            img_size=args.img_size,
            memory_method=METHOD[device.type],
            freed_memory=freed_memory_policy(args.keep_freed_memory),
        ),
        models=[],
    )  # fmt: skip
    if args.roofline:
        print("measuring the machine's limits", flush=True)
        args.limits = report["machine"] = machine_limits(device, args.quick, args.threads)
    started = time.perf_counter()
    for name in args.models:
        model_started = time.perf_counter()
        report["models"].append(bench_model(MODELS[name], args, device))
        report["models"][-1]["wall_s"] = time.perf_counter() - model_started
    report["settings"]["wall_s"] = time.perf_counter() - started
    finish(report["environment"])
    return report
