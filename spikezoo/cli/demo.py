"""``spikezoo demo``: classify the built-in input and report every spiking layer's firing rate."""

from __future__ import annotations

import argparse
import math
import time
from typing import TYPE_CHECKING

from spikezoo.cli.common import (
    choose_backend,
    note_compilation,
    positive_int,
    resolve_model_name,
)
from spikezoo.cli.errors import CommandError
from spikezoo_cli import progress

if TYPE_CHECKING:
    import torch

COMMAND = "spikezoo demo"
DEFAULT_MODEL = "sdt_2_256_cifar"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--pretrained`` and ``--time-steps``."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model or 'model.tag' name")
    parser.add_argument("--pretrained", action="store_true", help="load the tag's weights")
    parser.add_argument(
        "--time-steps", type=positive_int, help="override the number of time steps T (>= 1)"
    )


def default_image(channels: int, height: int, width: int) -> torch.Tensor:
    """The built-in input: a deterministic colour pattern ``[channels, H, W]`` in ``[0, 1]``."""
    import torch

    y = torch.linspace(-1, 1, height).view(-1, 1)
    x = torch.linspace(-1, 1, width).view(1, -1)
    ring = torch.cos(6 * math.pi * torch.sqrt(x**2 + y**2))
    planes = [ring, torch.sin(3 * math.pi * x) * torch.cos(2 * math.pi * y), x * y]
    return torch.stack([(planes[c % 3] + 1) / 2 for c in range(channels)])


def create_model(name: str, pretrained: bool, time_steps: int | None) -> torch.nn.Module:
    """``timm.create_model`` in eval mode; a failure to load weights becomes a CommandError."""
    import timm

    overrides = {} if time_steps is None else {"time_steps": time_steps}
    try:
        return timm.create_model(name, pretrained=pretrained, **overrides).eval()
    except Exception as error:
        if not pretrained:
            raise
        raise CommandError(
            f"could not load the pretrained weights of {name}: {error}", hint=_weights_hint(name)
        ) from error


def _weights_hint(name: str) -> str:
    """What to do when the weights of ``name`` could not be loaded: check the network where
    they exist somewhere, else look for a tag that has weights."""
    import timm

    from spikezoo.weights import weight_sources

    cfg = timm.models.get_pretrained_cfg(name)  # a bare model name: its default tag
    sources = [] if cfg is None else weight_sources(cfg)
    if sources:
        where = "; ".join(sources)
        return f"its weights: {where}; check the network connection, or run without --pretrained"
    return (
        "'spikezoo list --pretrained' shows the tags that have weights, or run without --pretrained"
    )


def run(args: argparse.Namespace) -> int:
    """Build the model, run the built-in input once, print the top-5 classes and firing rates."""
    name = resolve_model_name(args.model)
    import torch
    from timm.data import resolve_data_config

    from spikezoo.analysis import calibrate_batchnorm

    torch.manual_seed(0)
    with progress(COMMAND, f"building {name}"):
        model = create_model(name, args.pretrained, args.time_steps)
    # The calibration pass (random weights only) and the classifying pass.
    backend = choose_backend(model, None, 1 + int(not args.pretrained), torch.device("cpu"))
    config = resolve_data_config({}, model=model)
    channels, height, width = config["input_size"]
    mean = torch.tensor(config["mean"]).view(-1, 1, 1)
    std = torch.tensor(config["std"]).view(-1, 1, 1)
    image = ((default_image(channels, height, width) - mean) / std).unsqueeze(0)

    note_compilation("demo", model)
    compiling = " (the neurons' kernels compile first)" if backend == "inductor" else ""
    if not args.pretrained:
        with progress(COMMAND, f"calibrating BatchNorm on the input{compiling}"):
            calibrate_batchnorm(model, image)

    rates: dict[str, float] = {}
    for layer_name, neuron in model.spiking_neurons():
        neuron.register_forward_hook(
            lambda _m, _i, out, n=layer_name: rates.__setitem__(n, out.float().mean().item())
        )
    with progress(COMMAND, "classifying the input"), torch.no_grad():
        start = time.perf_counter()
        probs = model(image).softmax(-1)[0]
        elapsed = time.perf_counter() - start

    params = sum(p.numel() for p in model.parameters())
    weights = "pretrained" if args.pretrained else "random weights, BN calibrated on the input"
    print(f"{name}: {params / 1e6:.2f}M parameters, T={model.time_steps}, {weights}")
    print(f"neurons on the {backend} backend")
    print(f"input: built-in pattern {tuple(image.shape)}; forward {elapsed * 1e3:.0f} ms")
    print("top-5 classes:")
    top = probs.topk(min(5, probs.numel()))
    for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        print(f"  class {i:4d}  p={p:.4f}")
    print(f"firing rate of the {len(rates)} spiking layers (mean over T, batch, neurons):")
    for layer_name, rate in rates.items():
        print(f"  {layer_name:40s} {rate:.4f}")
    return 0
