"""Whole models: spikezoo against the authors' code and spikingjelly 2.x, time, memory, roofline.

For ``sdt_8_384`` (224x224), ``sdt_2_512_cifar`` (32x32), ``spikingresformer_ti`` (224x224),
``spikingresformer_cifar`` (32x32), ``spikformer_4_384_cifar``, ``spikingformer_4_384_cifar`` and
``qkformer_4_384_cifar`` (32x32), ``sdt_v2_8_384`` (Meta-SpikeFormer, 224x224, at T=1) and
``sdt_v3_t`` (E-SpikeFormer, 128x128), in one process, with the same threads, inputs and weights:

- inference images/s (eval mode, ``torch.no_grad``), and
- the time of one training step (forward, cross-entropy, backward, SGD step with momentum),
- the peak memory of each (see "Memory" below),

in float32 and under bf16 autocast, eager and ``torch.compile``, for these implementations
(``RUNNERS``; each is one entry, a row is skipped with the reason printed where one cannot run):

- ``spikezoo``: ``timm.create_model(name)``, neurons on their default backend;
- ``spikezoo+deploy``: the same after ``spikezoo.deploy.optimize(model)`` (inference only,
  compiled by ``optimize`` itself, so it has no separate compile rows);
- ``authors``: the authors' code at the commits pinned in ``setup_peers.sh`` (Spike-Driven
  Transformer V1, V2 and V3, SpikingResformer, Spikformer, Spikingformer, QKFormer), with their
  spikingjelly 0.0.0.0.14 (``benchmarks/peers/authors.py``: torch neuron backend on a CPU,
  their CuPy backend where CuPy runs; E-SpikeFormer has no spikingjelly neurons);
- ``spikingjelly2``: the same networks from spikingjelly 2.x layers
  (``benchmarks/peers/sj2_models.py``), for SDT and SpikingResformer (for the other families
  none is written, and the row is skipped with that reason).

Weights: the authors' model is built with their initialisation (seeded), run once in training
mode on a random batch (BatchNorm statistics and DSSA firing rates get real values), and its
state dict is mapped into spikezoo by the family's ``checkpoint_filter_fn``; the
spikingjelly 2.x network and the deployed model load spikezoo's. Before any timing, every
implementation's float32 eval logits on the benchmark input are compared with spikezoo's
(``--atol``), and so is the total number of spikes its neuron layers fire (an integer spike
``n`` of E-SpikeFormer counts ``n``); an implementation that disagrees is reported and not
timed. The one exception is ``spikezoo+deploy``: its folded float32 weights round differently,
so a membrane within rounding of its threshold may fire differently, and a flipped spike
changes the membranes after it; up to 1e-3 of its spikes may differ (the count is in the
report).

Time (:mod:`harness.timing`): ``torch.utils.benchmark.Timer`` per implementation; its first
call (which includes any compilation) is reported on its own, ``blocked_autorange`` warms it up,
then ``--repeats`` rounds each run every implementation once, in a rotating order, so that
background load falls on all alike. Tables give medians (min-max) and ratios of medians measured
in this run: ``speedup`` = the peer's median / spikezoo's (above 1: spikezoo is faster),
``memory`` = spikezoo's peak / the peer's.

Memory (:mod:`harness.memory`): the peak, during one call, of the memory allocated above what
was allocated when the call began (weights, optimizer state and the input are not counted).

Where the time goes (``--roofline``, :mod:`whole_models.roofline`): the machine's memory
bandwidth and FLOP rates, and per heavy layer of spikezoo its achieved fraction of the roofline.

The parts live in ``benchmarks/whole_models/`` (models and implementations, agreement, calls,
driver, roofline, report) and ``benchmarks/harness/`` (shared by every benchmark).
Run ``python benchmarks/bench_models.py --help`` for the options; ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from harness.environment import command_line  # noqa: E402
from harness.markdown import save  # noqa: E402
from whole_models.measure import measure  # noqa: E402
from whole_models.report import markdown, plot  # noqa: E402
from whole_models.zoo import MODELS, RUNNERS  # noqa: E402


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); else oneDNN emulates
    it, many times slower than float32, and bf16 rows would dominate a CPU run."""
    with contextlib.suppress(OSError):
        flags = Path("/proc/cpuinfo").read_text()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, with the defaults that depend on the device and ``--quick`` filled in."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", default=None,
        help=f"comma-separated, from {','.join(MODELS)} (default: all; --quick: the CIFAR models)",
    )  # fmt: skip
    parser.add_argument(
        "--impls", default=",".join(RUNNERS), help="comma-separated, from %(default)s"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--dtypes", default="fp32,bf16", help="fp32 and/or bf16 autocast (default: %(default)s)"
    )
    parser.add_argument(
        "--modes", default=None, help="eager and/or compile (default: both; --quick: eager)"
    )
    parser.add_argument(
        "--compile-models", default=None,
        help="models that get torch.compile rows (default: sdt_2_512_cifar on a CPU, all on CUDA)",
    )  # fmt: skip
    parser.add_argument(
        "--bf16-models", default=None,
        help="models that get bf16 rows (default: all on CUDA and on CPUs with native bf16, "
        "else none)",
    )  # fmt: skip
    parser.add_argument(
        "--compile-impls", default="spikezoo,spikingjelly2",
        help="implementations compiled in the compile rows (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--batch", type=int, default=None, help="one batch size for every model")
    parser.add_argument(
        "--img-size", type=int, default=None,
        help="one input size for every model (default: each model's own; a model with a "
        "position embedding of fixed size takes its own only); at a small size, what is left "
        "is the cost per call",
    )  # fmt: skip
    parser.add_argument(
        "--repeats", type=int, default=None, help="measured rounds (default 3, CUDA 10; quick 1)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None,
        help="unmeasured interleaved rounds after blocked_autorange's warm-up (default 0; CUDA 2)",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--atol", type=float, default=1e-4, help="logit tolerance of the agreement check"
    )
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip peak memory")
    parser.add_argument(
        "--keep-freed-memory", action="store_true",
        help="glibc keeps freed memory in this process (spikezoo.runtime.keep_freed_memory, as "
        "the spikezoo command does), for every implementation alike",
    )  # fmt: skip
    parser.add_argument("--no-roofline", dest="roofline", action="store_false", help="skip part 4")
    parser.add_argument("--top-layers", type=int, default=8, help="layers per roofline table")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: CIFAR models, small batches, eager"
    )
    parser.add_argument("--json", type=Path, help="write the full report here")
    parser.add_argument(
        "--markdown", type=Path, help="write the tables here (between the markers if present)"
    )
    parser.add_argument("--plots", type=Path, help="write PNG plots into this folder")
    parser.add_argument(
        "--from-json", type=Path, help="measure nothing: render the tables and plots of this report"
    )
    args = parser.parse_args(argv)
    args.command = command_line("bench_models.py", argv)
    cifar = ",".join(m for m in MODELS if m.endswith("_cifar"))
    on_cuda = args.device.startswith("cuda")

    def names(option: str, text: str, allowed) -> list[str]:
        values = [v for v in text.split(",") if v]
        unknown = [v for v in values if v not in allowed]
        if unknown:
            parser.error(
                f"{option}: unknown {', '.join(unknown)}; expected some of {', '.join(allowed)}"
            )
        return values

    args.models = names(
        "--models", args.models or (cifar if args.quick else ",".join(MODELS)), MODELS
    )
    args.impls = names("--impls", args.impls, RUNNERS)
    args.dtypes = names("--dtypes", args.dtypes, ("fp32", "bf16"))
    modes = args.modes or ("eager" if args.quick else "eager,compile")
    args.modes = names("--modes", modes, ("eager", "compile"))
    args.compile_impls = names("--compile-impls", args.compile_impls, RUNNERS)
    defaults = dict(
        compile_models=",".join(MODELS) if on_cuda else "sdt_2_512_cifar",
        bf16_models=",".join(MODELS) if on_cuda or native_bf16_cpu() else "",
    )
    for option, default in defaults.items():
        chosen = getattr(args, option)
        chosen = default if chosen is None else chosen
        setattr(args, option, names("--" + option.replace("_", "-"), chosen, MODELS))
    if "spikezoo" not in args.impls:
        parser.error("--impls must include spikezoo (every ratio is against it)")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 10 if on_cuda else 3
    if args.warmup is None:
        args.warmup = 2 if on_cuda and not args.quick else 0
    for option, value in (("--batch", args.batch), ("--img-size", args.img_size)):
        if value is not None and value < 1:
            parser.error(f"{option} must be >= 1, got {value}")
    if args.warmup < 0 or args.repeats < 1:
        parser.error(
            f"--warmup must be >= 0 and --repeats >= 1, got {args.warmup} and {args.repeats}"
        )
    return args


def main(argv: list[str] | None = None) -> dict:
    """Measure (or, with ``--from-json``, reload a report), then print and write the outputs."""
    args = parse_args(argv)
    report = json.loads(args.from_json.read_text()) if args.from_json else measure(args)
    text = markdown(report)
    print(text, flush=True)
    if args.plots:
        report["plots"] = [str(p.resolve()) for p in plot(report, args.plots)]
    if args.markdown and args.plots:  # the figures, linked relative to the markdown file
        links = [os.path.relpath(p, args.markdown.resolve().parent) for p in report["plots"]]
        text += "\n" + "\n\n".join(f"![{Path(link).stem}]({link})" for link in links) + "\n"
    save("bench_models", report, text, args.json, args.markdown)
    return report


if __name__ == "__main__":
    main()
