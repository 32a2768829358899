"""The integer neuron on the CPU: spikezoo's C kernel, PyTorch's operations, the authors' code.

Every implementation runs the neuron of the E-SpikeFormer base models (``D = 4``, output
``round(clamp(x, 0, 4)) / 4``, straight-through gradient ``1 / 4`` on ``0 <= x <= 4``) on the same
random float32 input ``x`` (values spread over ``[-2, 6]``):

- ``spikezoo``: ``spikezoo.neurons.IntegerNeuron(levels=4)``, which takes the C kernel
  (``spikezoo/native/integer_neurons.c``, :mod:`spikezoo.neurons.integer_fire`) on contiguous
  float32 CPU tensors;
- ``spikezoo-pytorch``: the same neuron with the kernel switched off: PyTorch's clamp, round and
  divide (and the window's mask in training), what it ran before the kernel;
- ``authors``: ``MultiSpike(min_value=0, max_value=4)`` of E-SpikeFormer's
  ``SDT_V3/Classification/Model_Base/models.py`` (BICLab/Spike-Driven-Transformer-V3, set up by
  ``benchmarks/setup_peers.sh``): ``Quant.apply``, a round of a clamp that saves its input,
  divided by ``Norm``; its backward clones the gradient and zeroes it outside the window.

Tasks: ``infer`` (one call under ``torch.inference_mode``) and ``train`` (one call on an input that
requires a gradient, then ``torch.autograd.grad`` of the spikes for a fixed random gradient).
The default shapes are those of ``sdt_v3_t``'s neurons at 128 px, its smallest and largest
(``[1, 1, 96, 8, 8]``, ``[1, 1, 48, 64, 64]``), and one of a 224 px model's first stage
(``[1, 1, 64, 112, 112]``).

Time (``harness.timing.interleaved``): blocks of calls of every implementation in rotating
order, the median of ``--repeats`` rounds in microseconds per call; the speedups are the peer's
median over spikezoo's (above 1: spikezoo is faster) and, in brackets, the median of the
per-round ratios. Agreement: each implementation's spikes and input gradients against
spikezoo's, with ``torch.equal``.

    python benchmarks/bench_integer_neurons.py
    python benchmarks/bench_integer_neurons.py --json benchmarks/results/integer_neurons_cpu.json \\
        --markdown docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from harness.environment import command_line, environment, finish, load_text  # noqa: E402
from harness.markdown import save, table  # noqa: E402
from harness.timing import error_text, interleaved, paired_ratio, ratio  # noqa: E402
from peers.authors import authors_module  # noqa: E402

from spikezoo.neurons import IntegerNeuron, integer_fire  # noqa: E402

DEFAULT_SHAPES = "1x1x96x8x8,1x1x48x64x64,1x1x64x112x112"
TASKS = ("infer", "train")
IMPLEMENTATIONS = ("spikezoo", "spikezoo-pytorch", "authors")
HEADER = [
    "shape", "task", "spikezoo us", "spikezoo-pytorch us", "authors us",
    "speedup vs PyTorch's operations", "speedup vs authors", "same spikes and gradients",
]  # fmt: skip


def shapes(text: str) -> list[tuple[int, ...]]:
    """``"1x1x96x8x8,..."`` (the ``--shapes`` option) -> ``[(1, 1, 96, 8, 8), ...]``."""
    try:
        parsed = [tuple(int(size) for size in shape.split("x")) for shape in text.split(",")]
    except ValueError:
        parsed = []
    if not parsed or any(size < 1 for shape in parsed for size in shape):
        raise argparse.ArgumentTypeError(f"expected sizes like 1x1x96x8x8,..., got {text!r}")
    return parsed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", type=shapes, default=DEFAULT_SHAPES,
                        help=f"input shapes (default {DEFAULT_SHAPES})")  # fmt: skip
    parser.add_argument("--tasks", default=",".join(TASKS), help="infer, train or both")
    parser.add_argument("--repeats", type=int, default=15, help="measured rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--markdown", type=Path, help="write the table here (between its markers)")
    args = parser.parse_args(argv)
    args.command = command_line("bench_integer_neurons.py", argv)
    args.tasks = args.tasks.split(",")
    if not args.tasks or not set(args.tasks) <= set(TASKS):
        parser.error(f"--tasks: expected a comma-separated subset of {TASKS}, got {args.tasks}")
    if args.repeats < 1:
        parser.error(f"--repeats: expected at least 1, got {args.repeats}")
    return args


def _without_kernel(call: Callable[[], object]) -> Callable[[], object]:
    """``call`` with spikezoo's C kernel switched off for its duration, backward included."""

    def run() -> object:
        kernel = integer_fire._kernel
        integer_fire._kernel = lambda: None
        try:
            return call()
        finally:
            integer_fire._kernel = kernel

    return run


def neurons() -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The implementations that can run here (``spikezoo-pytorch`` is spikezoo's neuron, run
    through :func:`_without_kernel`), and why any other cannot."""
    built = {"spikezoo": IntegerNeuron(levels=4), "spikezoo-pytorch": IntegerNeuron(levels=4)}
    missing = {}
    try:
        built["authors"] = authors_module("sdt3").MultiSpike(min_value=0, max_value=4)
    except RuntimeError as error:
        missing["authors"] = error_text(error)
    return built, missing


def _call(name: str, neuron: nn.Module, x: Tensor, task: str, grad: Tensor) -> Callable[[], object]:
    """One measured call of ``neuron``: without gradients, or forward and backward."""
    if task == "infer":

        def call() -> object:
            with torch.inference_mode():
                return neuron(x)
    else:
        leaf = x.clone().requires_grad_()

        def call() -> object:
            return torch.autograd.grad(neuron(leaf), leaf, grad)

    return _without_kernel(call) if name == "spikezoo-pytorch" else call


def _outputs(name: str, neuron: nn.Module, x: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    """The spikes and the input gradient of ``neuron`` on ``x`` for ``grad``."""
    leaf = x.clone().requires_grad_()

    def call() -> tuple[Tensor, Tensor]:
        spikes = neuron(leaf)
        return spikes.detach(), torch.autograd.grad(spikes, leaf, grad)[0]

    return (_without_kernel(call) if name == "spikezoo-pytorch" else call)()


def bench(shape: tuple[int, ...], task: str, args: argparse.Namespace) -> tuple[dict, list]:
    """Every implementation on one shape and task: the record and the table row."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=generator) * 8 - 2
    grad = torch.randn(shape, generator=generator)
    built, missing = neurons()
    reference = _outputs("spikezoo", built["spikezoo"], x, grad)
    agrees = {
        name: all(map(torch.equal, _outputs(name, neuron, x, grad), reference))
        for name, neuron in built.items()
    }
    timings = interleaved(
        {name: _call(name, neuron, x, task, grad) for name, neuron in built.items()},
        repeats=args.repeats, threads=args.threads, label="x".join(map(str, shape)),
        sub_label=task,
    )  # fmt: skip
    median = {name: timings[name].median_s for name in built}
    speedup = {name: ratio(median[name], median["spikezoo"]) for name in built}
    paired = {name: paired_ratio(timings["spikezoo"], timings[name]) for name in built}

    def versus(name: str) -> str:
        if name not in built:
            return "-"
        return f"{speedup[name]:.2f}x ({paired[name]:.2f}x)"

    row = [
        "x".join(map(str, shape)), task,
        *(f"{1e6 * median[name]:.1f}" if name in built else "-" for name in IMPLEMENTATIONS),
        versus("spikezoo-pytorch"), versus("authors"),
        "yes" if all(agrees.values()) else f"no: {[n for n, ok in agrees.items() if not ok]}",
    ]  # fmt: skip
    record = dict(
        timings={name: timing.to_dict() for name, timing in timings.items()},
        speedup=speedup, paired_speedup=paired, agrees=agrees, not_run=missing,
    )  # fmt: skip
    print(" | ".join(row), flush=True)
    return record, row


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    env = environment("cpu", args.threads, args.command)
    records, rows = {}, []
    for shape in args.shapes:
        for task in args.tasks:
            records[f"{'x'.join(map(str, shape))}:{task}"], row = bench(shape, task, args)
            rows.append(row)
    finish(env)
    not_run = neurons()[1]
    text = (
        f"`{args.command}` ({env['date']}, {load_text(env)}; {args.repeats} interleaved rounds, "
        f"{args.threads} threads)\n\n" + table(HEADER, rows)
    )
    if not_run:
        text += "\n\nNot run: " + "; ".join(f"{name}: {why}" for name, why in not_run.items())
    print("\n" + text)
    report = dict(environment=env, results=records)
    save("bench_integer_neurons", report, text, args.json, args.markdown)
    return report


if __name__ == "__main__":
    main()
