"""``spikezoo profile``: parameters, MACs, SOPs, energy, firing rates and throughput of a model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from spikezoo.cli.common import (
    choose_backend,
    note_compilation,
    positive_int,
    resolve_model_name,
)
from spikezoo.cli.errors import CommandError
from spikezoo.runtime import freed_memory_kept
from spikezoo_cli import progress

if TYPE_CHECKING:
    from spikezoo.analysis.profile import ModelProfile

COMMAND = "spikezoo profile"
FORMATS = ("table", "json", "csv")
RANDOM_WEIGHTS_NOTE = (
    "random weights (BatchNorm statistics calibrated on the input so that the network spikes): "
    "the counts show the accounting, not the trained network; use --pretrained or --checkpoint"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``MODEL``, ``--image``, ``--pretrained``/``--checkpoint``, T, batch, size, energy, format."""
    parser.add_argument("model", metavar="MODEL", help="model or 'model.tag' name")
    parser.add_argument(
        "--image", type=Path, help="image file (default: the built-in CC0 photo of a cat)"
    )
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", action="store_true", help="load the tag's weights")
    weights.add_argument("--checkpoint", type=Path, metavar="FILE", help="load weights from FILE")
    parser.add_argument("--time-steps", type=positive_int, help="override the time steps T")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="images per batch")
    parser.add_argument(
        "--input-size", type=positive_int, help="square input side (default: the model's)"
    )
    parser.add_argument(
        "--backend",
        help="neuron backend for every neuron: auto, native, torch, inductor, cupy (default: "
        "auto; torch, eager, for up to 20 forward passes where auto would compile with inductor)",
    )
    parser.add_argument("--device", help="where to run, e.g. cpu, cuda:0 (default: cuda if any)")
    parser.add_argument(
        "--energy", default="45nm-fp32", help="energy preset (E_MAC, E_AC), default 45nm-fp32"
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="timed forward passes (median), default 3"
    )
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format")


def run(args: argparse.Namespace) -> int:
    """Build the model, profile it on the image, print the result in ``--format``."""
    name = resolve_model_name(args.model)
    import torch

    from spikezoo.analysis import calibrate_batchnorm, get_energy_model
    from spikezoo.analysis.inputs import image_input, load_image, sample_image_path
    from spikezoo.analysis.profile import profile_model

    try:
        energy = get_energy_model(args.energy)
    except ValueError as error:
        raise CommandError(str(error)) from None
    image_path = args.image or sample_image_path()
    try:
        image = load_image(image_path)
    except ValueError as error:
        raise CommandError(str(error), hint="give a PNG or JPEG file with --image") from None

    device = _device(args.device)
    torch.manual_seed(0)
    with progress(COMMAND, f"building {name}"):
        model = _create_model(name, args).to(device)
    calibrated = not (args.pretrained or args.checkpoint)
    # A calibration pass (if any), the counted pass, then the timed ones.
    passes = int(calibrated) + 1 + args.repeats
    backend = choose_backend(model, args.backend, passes, device)
    try:
        if args.input_size is not None:
            model.check_image_size(args.input_size, args.input_size)
        sample = image_input(model, image, args.input_size, args.time_steps)
    except ValueError as error:
        raise CommandError(f"{image_path}: {error}" if args.image else str(error)) from None
    sample = sample.to(device)
    note_compilation("profile", model)
    compiling = " (the neurons' kernels compile first)" if backend == "inductor" else ""
    if calibrated:
        with progress(COMMAND, f"calibrating BatchNorm on the image{compiling}"):
            calibrate_batchnorm(model, sample)
    inputs = sample.expand(args.batch_size, *sample.shape[1:]).contiguous()
    passes_timed = "1 forward pass" if args.repeats == 1 else f"{args.repeats} forward passes"
    doing = f"counting operations, timing {passes_timed}"
    try:
        with progress(COMMAND, doing + ("" if calibrated else compiling)):
            profile = profile_model(model, inputs, energy, args.repeats)
    except ValueError as error:
        raise CommandError(f"{name}: {error}") from None

    image_name = f"{image_path}" if args.image else f"{image_path.name} (built-in)"
    run = dict(
        model=name,
        weights=_weights(args),
        image=image_name,
        neuron_backend=backend,
        freed_memory="kept" if freed_memory_kept() else "default",
    )
    if args.format == "json":
        print(json.dumps({**run, **profile.to_dict()}))
    elif args.format == "csv":
        sys.stdout.write(_csv(run, profile))
    else:
        print(_table(run, profile, args.repeats))
    return 0


#: How the throughput line words ``run["freed_memory"]``.
FREED_MEMORY = {
    "kept": "freed memory kept in the process (spikezoo.runtime)",
    "default": "freed memory as the C library handles it by default",
}


def _create_model(name: str, args: argparse.Namespace):
    import timm

    from spikezoo.cli.demo import create_model

    if args.checkpoint is None:
        return create_model(name, args.pretrained, args.time_steps)
    if not args.checkpoint.is_file():
        raise CommandError(f"checkpoint {str(args.checkpoint)!r} is not a file")
    overrides = {} if args.time_steps is None else {"time_steps": args.time_steps}
    try:
        return timm.create_model(
            name,
            pretrained=True,
            pretrained_cfg_overlay=dict(file=str(args.checkpoint)),
            **overrides,
        ).eval()
    except Exception as error:
        raise CommandError(
            f"could not load {name} weights from {str(args.checkpoint)!r}: {error}"
        ) from error


def _device(name: str | None):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CommandError(f"unknown device {name!r}", hint="e.g. cpu, cuda, cuda:1") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CommandError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def _weights(args: argparse.Namespace) -> str:
    if args.checkpoint is not None:
        return f"checkpoint {args.checkpoint}"
    return "pretrained" if args.pretrained else "random"


def _si(value: float, unit: str = "") -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3f} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def _table(run: dict[str, str], profile: ModelProfile, repeats: int) -> str:
    """The table ``--format table`` prints; ``run`` holds model, weights, image, neuron_backend
    and freed_memory."""
    ops, energy = profile.ops, profile.ops.energy
    weights_line = RANDOM_WEIGHTS_NOTE if run["weights"] == "random" else run["weights"]
    lines = [
        f"{run['model']}: {weights_line}",
        f"input       {run['image']} -> {list(profile.input_shape)}, T={profile.time_steps}",
        f"parameters  {_si(profile.parameters)}",
        f"MACs        {_si(ops.macs)}  (real-valued inputs, full cost)",
        f"SOPs        {_si(ops.sops)}  (accumulates triggered by spikes)",
        f"energy      {ops.energy_mj:.4f} mJ per image = {energy.e_mac} pJ x MACs + "
        f"{energy.e_ac} pJ x SOPs ({energy.name})",
        f"            backbone {ops.backbone_energy_mj:.4f} mJ, "
        f"classifier {ops.classifier_energy_mj:.4f} mJ",
        f"            rate x T x FLOPs estimate (SDT papers): {ops.rate_energy_mj:.4f} mJ",
        f"dense       {_si(ops.dense_macs)} MACs as a non-spiking network over T steps "
        f"({energy.e_mac * ops.dense_macs * 1e-9:.4f} mJ)",
        f"throughput  {profile.throughput:.3g} images/s (batch {profile.input_shape[0]}, "
        f"{profile.device}, median of {repeats}), neurons on the {run['neuron_backend']} backend, "
        + FREED_MEMORY[run["freed_memory"]],
        f"mean firing rate {profile.rates.mean_rate:.4f}; per layer (mean over T, batch and "
        "neurons, then per time step):",
        profile.rates.per_layer().to_markdown(".4f"),
    ]
    return "\n".join(lines)


def _csv(run: dict[str, str], profile: ModelProfile) -> str:
    """The rows ``--format csv`` prints: section, layer, metric, value."""
    from spikezoo.analysis import Table

    rows = [["summary", "", key, value] for key, value in run.items()]
    rows.extend(
        ["summary", "", key, json.dumps(value) if isinstance(value, list) else value]
        for key, value in profile.summary().items()
    )
    for layer in profile.ops.per_layer():
        rows.extend(
            ["ops", layer["layer"], key, value] for key, value in layer.items() if key != "layer"
        )
    for layer in profile.rates.per_layer():
        rows.extend(
            ["firing_rate", layer["layer"], key, value]
            for key, value in layer.items()
            if key not in ("layer", "neuron") and value is not None
        )
    return Table(["section", "layer", "metric", "value"], rows).to_csv()
