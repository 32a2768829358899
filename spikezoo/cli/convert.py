"""``spikezoo convert``: a checkpoint file -> a timm model directory (safetensors, config, card)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spikezoo.cli.common import resolve_model_name
from spikezoo.cli.errors import CommandError
from spikezoo.cli.weights_errors import reported_as_command_errors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``SRC [--model NAME[.TAG]] --out DIR [--install] [--model-args JSON]``."""
    parser.add_argument("source", metavar="SRC", type=Path, help="checkpoint file")
    parser.add_argument(
        "--model",
        help="spikezoo model or model.tag (default for a 'spikezoo train' checkpoint: the "
        "model it names, without a tag)",
    )
    parser.add_argument("--out", required=True, type=Path, help="directory to write")
    parser.add_argument(
        "--install", action="store_true", help="also put it where pretrained=True finds it"
    )
    parser.add_argument(
        "--model-args",
        type=_json_object,
        default={},
        metavar="JSON",
        help="architecture arguments, e.g. '{\"time_steps\": 4}'",
    )


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Convert, print what was written and where it came from."""
    from spikezoo.hub import convert_checkpoint
    from spikezoo.weights import install

    name = None if args.model is None else resolve_model_name(args.model)
    if args.out.exists() and any(args.out.iterdir()):
        raise CommandError(f"{args.out} exists and is not empty", "choose a new --out directory")
    with reported_as_command_errors(f"'spikezoo convert --help'; {args.source}"):
        provenance = convert_checkpoint(args.source, name, args.out, args.model_args)
    if args.install and "." not in provenance["model"]:
        raise CommandError(
            f"wrote {args.out}, but did not install it: {provenance['model']} has no tag whose "
            "data config matches these weights, and pretrained=True finds weights by tag",
            hint=f"load it with timm.create_model('local-dir:{args.out}', pretrained=True)",
        )
    print(f"{provenance['model']}: wrote {args.out} (model.safetensors, config.json, README.md)")
    print(f"source sha256 {provenance['sha256']}")
    print(f"load it with timm.create_model('local-dir:{args.out}', pretrained=True)")
    if args.install:
        target = install(args.out, provenance["model"])
        print(f"installed as {target}: timm.create_model('{provenance['model']}', pretrained=True)")
    return 0
