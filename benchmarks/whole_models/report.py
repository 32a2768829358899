"""A report of ``bench_models.py`` as Markdown tables and PNG plots."""

from __future__ import annotations

from pathlib import Path

from harness.environment import load_text
from harness.markdown import table

from whole_models.roofline import LIMITS

MiB = 2**20

TIMING_HEADER = [
    "implementation", "dtype", "mode", "task", "ms per call (min-max)", "images/s",
    "speedup of spikezoo", "peak MiB", "spikezoo memory ratio", "outside conv/matmul",
    "first call s",
]  # fmt: skip
LAYER_HEADER = [
    "layer", "type", "ms", "GFLOP", "MB moved", "GFLOP/s", "GB/s", "bound", "fraction of roof",
]  # fmt: skip
SPLIT_HEADER = [
    "task", "outside ms (profiled)", "C kernels ms", "spike compaction ms",
    "PyTorch data operators ms", "their least traffic MB", "their GB/s",
    "allocations and views ms (calls)", "autograd and other ranges ms (calls)",
    "between operators ms", "outside ms (unprofiled)",
]  # fmt: skip
AGREEMENT_HEADER = ["implementation", "max abs logit diff", "spikes fired", "same spikes", "agrees"]


def _ms(entry: dict) -> str:
    if "error" in entry:
        return "failed"
    low, high = entry["min_s"] * 1e3, entry["max_s"] * 1e3
    return f"{entry['median_s'] * 1e3:.1f} ({low:.0f}-{high:.0f})"


def _mib(entry: dict) -> str:
    return f"{entry['peak_bytes'] / MiB:.0f}" if entry.get("peak_bytes") is not None else "-"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _shares(profile: dict) -> str:
    """``"<of the profiled call> (<of the timed median>)"``."""
    return f"{profile['share_outside']:.0%} ({profile['share_outside_timed']:.0%})"


def _share(entry: dict) -> str:
    return _shares(entry["profile"]) if "profile" in entry else "-"


def _spikezoo_shares(model: dict) -> list[str]:
    """``"<task> <dtype>: <share> (largest outside: <op> <ms>, ...)"`` for spikezoo's profiled
    (eager) rows."""
    lines = []
    for v in model["variants"]:
        profile = v["results"].get("spikezoo", {}).get("profile")
        if profile is None:
            continue
        top = ", ".join(
            f"`{name}` {seconds * 1e3:.1f} ms" for name, seconds in profile.get("top_outside", [])
        )
        largest = f" (largest outside, self time: {top})" if top else ""
        lines.append(f"{v['task']} {v['dtype']} {_shares(profile)}{largest}")
    return lines


#: The kinds of time outside given in milliseconds alone, before the data operators' traffic.
_TIMED_KINDS = ("kernels", "compaction", "data_operators")


def _split_rows(model: dict, bandwidth_Bps: float | None) -> list[list[str]]:
    """Per profiled spikezoo row, its time outside convolutions and matmuls by kind
    (:mod:`whole_models.share`); the data operators' rate also as a fraction of the machine's
    add bandwidth where it was measured."""
    rows = []
    for v in model["variants"]:
        entry = v["results"].get("spikezoo", {})
        profile = entry.get("profile", {})
        if "split" not in profile:
            continue
        split = profile["split"]
        rate = split["data_bytes"] / split["data_operators_s"] if split["data_operators_s"] else 0
        of_roof = f" ({rate / bandwidth_Bps:.2f} of the add)" if bandwidth_Bps else ""
        unprofiled = max(0.0, entry["median_s"] - profile["conv_matmul_s"])
        rows.append(
            [
                f"{v['task']} {v['dtype']}",
                f"{(profile['wall_s'] - profile['conv_matmul_s']) * 1e3:.1f}",
                *(f"{split[f'{k}_s'] * 1e3:.1f}" for k in _TIMED_KINDS),
                f"{split['data_bytes'] / 1e6:.0f}",
                f"{rate / 1e9:.1f}{of_roof}",
                *(
                    f"{split[f'{kind}_s'] * 1e3:.1f} ({split[f'{kind}_calls']})"
                    for kind in ("metadata_operators", "ranges")
                ),
                f"{split['between_s'] * 1e3:.1f}",
                f"{unprofiled * 1e3:.1f}",
            ]
        )
    return rows


def _diff(verdict: dict) -> str:
    if verdict["max_abs_logit_diff"] is None:
        return f"failed: {verdict.get('error', '')}"
    return f"{verdict['max_abs_logit_diff']:.1e}"


def _timing_rows(model: dict) -> list[list[str]]:
    rows = []
    for variant in model["variants"]:
        for name, entry in variant["results"].items():
            rate = f"{model['batch'] / entry['median_s']:.1f}" if "median_s" in entry else "-"
            first = f"{entry['first_call_s']:.1f}" if entry.get("first_call_s") else "-"
            rows.append(
                [
                    *(name, variant["dtype"], variant["mode"], variant["task"], _ms(entry), rate),
                    *(_ratio(entry.get("speedup_of_spikezoo")), _mib(entry)),
                    *(_ratio(entry.get("spikezoo_memory_ratio")), _share(entry), first),
                ]
            )
    return rows


def _profile_lines(dtype: str, profile: dict) -> list[str]:
    share = profile["leaf_time_s"] / profile["forward_s"]
    by_type = list(profile["time_by_type_s"].items())[:6]
    rows = [
        [
            *(row["module"], row["type"], f"{row['time_s'] * 1e3:.2f}"),
            *(f"{row['flops'] / 1e9:.2f}", f"{row['bytes'] / 1e6:.1f}"),
            *(f"{row['gflops_per_s']:.1f}", f"{row['gbytes_per_s']:.1f}"),
            *(row["bound"], f"{row['fraction_of_roof']:.0%}"),
        ]
        for row in profile["layers"]
    ]
    return [
        "",
        f"Where the time goes (spikezoo, eager forward, {dtype}): "
        f"{profile['forward_s'] * 1e3:.1f} ms per batch, {share:.0%} of it inside leaf modules; "
        "by type: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in by_type) + ".",
        "",
        table(LAYER_HEADER, rows),
    ]


def markdown(report: dict) -> str:
    """The report as Markdown: the run, then per model timings, agreement and profile."""
    env, settings = report["environment"], report["settings"]
    quick = " (**quick smoke run**: small batches, few repeats)" if settings["quick"] else ""
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    lines = [
        f"Run: {env['date']}, {env['device']}, {env['threads']} threads{quick}; {load_text(env)}.",
        "",
        f"Versions: {versions}.",
        "",
        f"Command: `{settings['command']}`",
        "",
        # reports written before the option existed ran with glibc's defaults
        f"Freed memory: {settings.get('freed_memory', 'glibc defaults')}.",
        "",
        "Timing: `torch.utils.benchmark.Timer`; the first call on its own (seconds, includes "
        "compilation), then `blocked_autorange` as warm-up, then the median of "
        f"{settings['repeats']} interleaved rounds, milliseconds per call (min-max). Speedup: "
        "the peer's median / spikezoo's (above 1: spikezoo is faster). Memory: peak MiB "
        f"allocated during one call above what was live before it ({settings['memory_method']}); "
        "ratio = spikezoo / peer. Outside conv/matmul (eager rows, CPU): the share of a profiled "
        "call's wall time (the median of three) spent outside the outermost `aten` convolution and"
        " `mm`/`bmm`/`addmm` operators, their backward included (`torch.profiler`; the profiler's "
        "cost per operator counts as outside: an upper bound), and in brackets the share of the "
        "unprofiled median time outside the same operators' profiled time (the profiler's cost "
        "left out). By kind (a table per model): spikezoo's C kernels; spike compaction's packing "
        "and unpacking of saved tensors; PyTorch's operators that move data, with the least "
        "traffic their input shapes imply and its rate; those that only allocate or make views; "
        "the self time of other named ranges (autograd functions' Python, the autograd engine's "
        "nodes, the optimizer); the time under no range (Python between operators). They add up to"
        " the profiled time outside, which includes the profiler's own cost; the unprofiled median"
        " minus the time inside gives the time outside without it.",
        "",
    ]
    for model in report["models"]:
        size = model["img_size"]
        lines += [f"### {model['model']} ({size}x{size}, batch {model['batch']})", ""]
        lines += [table(TIMING_HEADER, _timing_rows(model)), ""]
        shares = _spikezoo_shares(model)
        if shares:
            lines += [
                "Time outside convolutions and matmuls, spikezoo (eager): " + "; ".join(shares)
                + ".",
                "",
            ]  # fmt: skip
        split = _split_rows(model, (report.get("machine") or {}).get("bandwidth_add_Bps"))
        if split:
            lines += [
                "spikezoo's time outside convolutions and matmuls by kind (the profiled call; "
                "`benchmarks/whole_models/share.py`):",
                "",
                table(SPLIT_HEADER, split),
                "",
            ]
        lines += ["Agreement with spikezoo (float32, eval, the benchmark input):", ""]
        agreement = [
            [name, _diff(v), str(v["spikes"]), str(v["same_spikes"]), str(v["agree"])]
            for name, v in model["agreement"].items()
        ]
        lines.append(table(AGREEMENT_HEADER, agreement))
        if model["skipped"]:
            skipped = "; ".join(f"{k}: {v}" for k, v in model["skipped"].items())
            lines += ["", f"Not run: {skipped}."]
        for dtype, profile in model["roofline"].items():
            lines += _profile_lines(dtype, profile)
        lines.append("")
    if report.get("machine"):
        limits = report["machine"]
        values = [f"{limits[key] / 1e9:.1f}" for _, key in LIMITS]
        lines += ["### Machine limits (measured)", "", table([c for c, _ in LIMITS], [values]), ""]
    return "\n".join(lines)


def plot(report: dict, directory: Path) -> list[Path]:
    """Bar charts of images/s, training-step time and peak memory; one roofline per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    panels = (
        ("infer", "rate", "images/s (higher is better)"),
        ("train", "ms", "training step ms (lower is better)"),
        ("train", "mib", "training peak MiB (lower is better)"),
    )
    for model in report["models"]:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        for ax, (task, key, label) in zip(axes, panels, strict=True):
            labels, values = [], []
            for variant in model["variants"]:
                if variant["task"] != task:
                    continue
                for name, entry in variant["results"].items():
                    if "median_s" not in entry or (key == "mib" and "peak_bytes" not in entry):
                        continue
                    labels.append(f"{name}\n{variant['dtype']} {variant['mode']}")
                    values.append(
                        model["batch"] / entry["median_s"] if key == "rate"
                        else entry["median_s"] * 1e3 if key == "ms"
                        else entry["peak_bytes"] / MiB
                    )  # fmt: skip
            ax.barh(range(len(values)), values, color="tab:blue")
            ax.set_yticks(range(len(values)), labels, fontsize=7)
            ax.invert_yaxis()
            ax.set_xlabel(label)
        fig.suptitle(f"{model['model']} ({model['img_size']}px, batch {model['batch']})")
        fig.tight_layout()
        path = directory / f"{model['model']}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
        if model["roofline"] and report.get("machine"):
            written.append(_roofline_plot(plt, model, report["machine"], directory))
    return written


def _roofline_plot(plt, model: dict, limits: dict, directory: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    bandwidth = limits["bandwidth_Bps"]
    intensities = [10 ** (i / 10) for i in range(-20, 41)]
    for dtype, marker in (("fp32", "o"), ("bf16", "s")):
        profile = model["roofline"].get(dtype)
        if not profile:
            continue
        for kind, style in (("matmul", "-"), ("conv", "--")):
            peak = limits[f"{kind}_{dtype}_flops"]
            roof = [min(peak, x * bandwidth) / 1e9 for x in intensities]
            ax.plot(intensities, roof, style, lw=1, label=f"{kind} roof {dtype}")
        rows = [r for r in profile["layers"] if r["flops"] and r["intensity"]]
        ax.scatter(
            [r["intensity"] for r in rows], [r["gflops_per_s"] for r in rows],
            marker=marker, label=f"layers {dtype}",
        )  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FLOP per byte moved")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(f"{model['model']}: heaviest layers against the roofline")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = directory / f"{model['model']}_roofline.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
