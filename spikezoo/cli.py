"""The ``spikezoo`` command line: ``--version``, ``list`` and ``demo``."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence

import timm
import torch
from timm.data import resolve_data_config

import spikezoo


def default_image(channels: int, height: int, width: int) -> torch.Tensor:
    """The built-in input: a deterministic colour pattern ``[channels, H, W]`` in ``[0, 1]``."""
    y = torch.linspace(-1, 1, height).view(-1, 1)
    x = torch.linspace(-1, 1, width).view(1, -1)
    ring = torch.cos(6 * math.pi * torch.sqrt(x**2 + y**2))
    planes = [ring, torch.sin(3 * math.pi * x) * torch.cos(2 * math.pi * y), x * y]
    return torch.stack([(planes[c % 3] + 1) / 2 for c in range(channels)])


def _list(args: argparse.Namespace) -> int:
    pattern = args.filter or "*"
    names = timm.list_pretrained(pattern) if args.pretrained else timm.list_models(pattern)
    for name in names:
        if name.split(".")[0] in spikezoo.models.MODEL_NAMES:
            print(name)
    return 0


def _demo(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    overrides = {} if args.time_steps is None else {"time_steps": args.time_steps}
    try:
        model = timm.create_model(args.model, pretrained=args.pretrained, **overrides).eval()
    except RuntimeError as error:  # e.g. pretrained weights that cannot be fetched offline
        print(f"spikezoo demo: {error}", file=sys.stderr)
        return 1
    config = resolve_data_config({}, model=model)
    channels, height, width = config["input_size"]
    mean = torch.tensor(config["mean"]).view(-1, 1, 1)
    std = torch.tensor(config["std"]).view(-1, 1, 1)
    image = ((default_image(channels, height, width) - mean) / std).unsqueeze(0)

    if not args.pretrained:
        _calibrate_batchnorm(model, image)

    rates: dict[str, float] = {}
    for name, neuron in model.spiking_neurons():
        neuron.register_forward_hook(
            lambda _m, _i, out, name=name: rates.__setitem__(name, out.float().mean().item())
        )
    start = time.perf_counter()
    with torch.no_grad():
        probs = model(image).softmax(-1)[0]
    elapsed = time.perf_counter() - start

    params = sum(p.numel() for p in model.parameters())
    weights = "pretrained" if args.pretrained else "random weights, BN calibrated on the input"
    print(f"{args.model}: {params / 1e6:.2f}M parameters, T={model.time_steps}, {weights}")
    print(f"input: built-in pattern {tuple(image.shape)}; forward {elapsed * 1e3:.0f} ms")
    print("top-5 classes:")
    top = probs.topk(min(5, probs.numel()))
    for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        print(f"  class {i:4d}  p={p:.4f}")
    print(f"firing rate of the {len(rates)} spiking layers (mean over T, batch, neurons):")
    for name, rate in rates.items():
        print(f"  {name:40s} {rate:.4f}")
    return 0


def _calibrate_batchnorm(model: torch.nn.Module, image: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to those of ``image`` and its mirror images.

    Freshly initialised statistics (mean 0, variance 1) leave a random network silent; this
    makes the untrained demo network spike the way a trained one would on its data.
    """
    batch = torch.cat([image, image.flip(-1), image.flip(-2), image.flip(-1, -2)])
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: one pass sets the statistics
    with torch.no_grad():
        model.train()(batch)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spikezoo", description=spikezoo.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"spikezoo {spikezoo.__version__}")
    commands = parser.add_subparsers(dest="command")
    listing = commands.add_parser("list", help="list the registered models (or pretrained tags)")
    listing.add_argument("filter", nargs="?", help="wildcard pattern, e.g. 'sdt_*'")
    listing.add_argument("--pretrained", action="store_true", help="list 'model.tag' names")
    listing.set_defaults(run=_list)
    demo = commands.add_parser(
        "demo", help="classify the built-in input and report each spiking layer's firing rate"
    )
    demo.add_argument("--model", default="sdt_2_256_cifar", help="model or 'model.tag' name")
    demo.add_argument("--pretrained", action="store_true", help="load the tag's weights")
    demo.add_argument("--time-steps", type=int, help="override the number of time steps T")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
